"""The synthesis stage: D* -> samples -> (responses) -> filters -> an Axolotl dataset -> scorecard.

Resumable and sharded. Its folder, `synthesis/<run key>/` (`layout.SynthesisRun`), is keyed by
everything that changes what is generated: sampling and responder settings, reference format, base
model, the bytes of D*. Every rank produces its round-robin share of shards (`shards.py`); rank 0
waits for all of them (by polling files, not in a collective) and merges in index order, so the
dataset depends on the seed and the settings, not on the number of ranks or on how often the run
was interrupted. What only the merge reads (dataset format, filters, `responses.keep_unfinished`)
is not keyed: changing it merges the same shards again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from axolotl_domino.args import ENDPOINT_TRANSPORT_KEYS, DominoConfig
from axolotl_domino.files import (
    append_jsonl, digest, file_sha256, jsonl_bytes, read_jsonl, recover_journal, remove_temporaries, write_atomic,
)
from axolotl_domino.filters import apply_filters
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.cpu import precision_reason, use_cpu_bf16
from axolotl_domino.errors import ConfigError
from axolotl_domino.hf import hidden_size, inference_dtype, load_model, rank_device, sample_seed
from axolotl_domino.induce import METADATA_FILE
from axolotl_domino.judge import judge_identity
from axolotl_domino.layout import Layout, SynthesisRun, source_adapter
from axolotl_domino.publish import DATASET_FILES, check_hub_access, push_folder
from axolotl_domino.references import load_references, sample_text
from axolotl_domino.respond import Responder
from axolotl_domino.shards import Heartbeat, my_pending_shards, rank_and_world, shard_indices, wait_for
from axolotl_domino.write import instruction, record, write_dataset, write_hf_card, write_hf_dataset, write_manifest

LOG = logging.getLogger("axolotl.integrations.domino.synthesize")


@dataclass
class SynthesisResult:
    dataset: Path
    manifest: dict[str, Any]


def run_key(domino: DominoConfig, base_model: str, adapter_sha256: str) -> str:
    """Hash of every input that changes the generated samples (batch size is recorded, not keyed; what only
    the merge reads, like responses.keep_unfinished, is checked by `_finished`; min_kept is checked after).

    `cpu_bf16` is keyed as set, not as resolved: "auto" keys alike on every machine (a run resumed elsewhere
    keeps its shards; the manifest records the dtype), and setting it reruns the stage. Keyed only when set,
    so keys from before it existed stay valid."""
    inputs = {
        "synthesis": domino.synthesis.model_dump(exclude={"adapter", "batch_size", "min_kept", "decode"}),
        "responses": _responder_key(domino),
        "reference_format": [domino.references.format, domino.references.chat_role],
        "base_model": base_model,
        "adapter_sha256": adapter_sha256,
    }
    if domino.cpu_bf16 != "auto":
        inputs["cpu_bf16"] = domino.cpu_bf16
    return digest(inputs)


def _responder_key(domino: DominoConfig) -> dict[str, Any]:
    """The responder settings that change the answers: not how requests reach a server, and no `endpoint`
    entry without one (keys of runs from before endpoints existed stay valid)."""
    settings = domino.responses.model_dump(exclude={"keep_unfinished": True, "endpoint": ENDPOINT_TRANSPORT_KEYS})
    if settings["endpoint"] is None:
        del settings["endpoint"]
    return settings


def load_domain_tokens(adapter: Path, hidden: int) -> Tensor:
    """D* from a PEFT prompt-tuning adapter folder, checked against the model's hidden size."""
    weights = adapter / SAFETENSORS_WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(
            f"domino.synthesis.adapter: no {SAFETENSORS_WEIGHTS_NAME} in {adapter}; run induction first "
            "(`axolotl train` with adapter: domino_prompt) or point domino.synthesis.adapter at its output_dir."
        )
    domain = load_file(str(weights))["prompt_embeddings"]
    if domain.shape[1] != hidden:
        raise ConfigError(
            f"domino.synthesis.adapter: D* in {adapter} has hidden size {domain.shape[1]} but the base model has "
            f"{hidden}; it was induced on another model."
        )
    return domain


def current_run(domino: DominoConfig, base_model: str) -> tuple[SynthesisRun, str]:
    """The stage's folder for these inputs, and the sha256 of D* it is keyed on."""
    weights = source_adapter(domino) / SAFETENSORS_WEIGHTS_NAME
    adapter_sha = file_sha256(weights) if weights.is_file() else "missing"
    return Layout.of(domino).run(run_key(domino, base_model, adapter_sha)), adapter_sha


def finished(domino: DominoConfig, base_model: str) -> SynthesisResult | None:
    """The result if the stage is up to date for these inputs, else None."""
    return _finished(current_run(domino, base_model)[0], domino)


def synthesize(
    domino: DominoConfig,
    base_model: str,
    rank: int | None = None,
    world_size: int | None = None,
    trust_remote_code: bool = False,
) -> SynthesisResult:
    """Run (or resume, or skip when done) the synthesis stage on this rank; every rank returns the result.

    `trust_remote_code` applies to the base model only and is never turned on implicitly. With
    `dataset.push_to_hub`, rank 0 pushes the Hugging Face dataset folder once the stage is done (or skipped).
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    repo = domino.dataset.push_to_hub if rank == 0 else None
    if repo:
        check_hub_access("domino.dataset.push_to_hub")
    with Heartbeat(Layout.of(domino).heartbeat(rank)) if world_size > 1 else nullcontext():
        result = _synthesize(domino, base_model, rank, world_size, trust_remote_code)
    if repo:
        push_folder(SynthesisRun(result.dataset.parent).hf_dataset, repo, "dataset", domino.dataset.private, DATASET_FILES,
                    "domino.dataset.push_to_hub", replace=["data/*.parquet"])
    return result


def _synthesize(domino: DominoConfig, base_model: str, rank: int, world_size: int, trust_remote_code: bool) -> SynthesisResult:
    run, adapter_sha = current_run(domino, base_model)
    done = _finished(run, domino)
    if done is not None:
        LOG.info("domino: synthesis up to date in %s", run.dir)
        return done

    started = time.perf_counter()
    shards = shard_indices(domino.synthesis.num_samples, domino.synthesis.shard_size)
    todo_samples = my_pending_shards(run.sample_shard, len(shards), rank, world_size)
    todo_responses = my_pending_shards(run.response_shard, len(shards), rank, world_size) if domino.responses.enabled else []
    if todo_samples or todo_responses:
        # vLLM loads its own copy and takes most of the GPU: HF weights are loaded only once its engine is gone,
        # and only for a local responder (`_respond_shards`).
        hf_sampling = bool(todo_samples) and domino.synthesis.backend == "hf"
        if rank_device().type == "cpu":
            LOG.info("domino: local models (sampler, responder, judge) in %s: %s", _local_dtype(domino),
                     precision_reason(domino.cpu_bf16))
        tokenizer, model = load_model(base_model, rank_device(), trust_remote_code, load_weights=hf_sampling,
                                      cpu_bf16=use_cpu_bf16(domino.cpu_bf16))
        if todo_samples:
            domain = load_domain_tokens(source_adapter(domino), hidden_size(base_model, trust_remote_code))
            with _timed(f"domino: sampled {len(todo_samples)} shard(s) from D* (rank {rank})"):
                _generate_shards(domino, base_model, model, tokenizer, domain, shards, todo_samples, run, rank)
        if todo_responses:
            with _timed(f"domino: answered {len(todo_responses)} shard(s) (rank {rank})"):
                _respond_shards(domino, base_model, model, tokenizer, shards, todo_responses, run, rank, trust_remote_code)
        del model

    layout = Layout.of(domino)
    if rank != 0:
        wait_for([run.manifest], "rank 0 to merge the synthetic dataset", [layout.heartbeat(0)], domino.wait_timeout_s)
        return _finished(run, domino)
    expected = [run.sample_shard(s) for s in range(len(shards))]
    if domino.responses.enabled:
        expected += [run.response_shard(s) for s in range(len(shards))]
    others = [layout.heartbeat(r) for r in range(1, world_size)]
    wait_for(expected, "the other ranks' shards", others, domino.wait_timeout_s)
    return _merge(domino, base_model, adapter_sha, run, len(shards), world_size, time.perf_counter() - started)


def _finished(run: SynthesisRun, domino: DominoConfig) -> SynthesisResult | None:
    """The stage's result if its manifest exists for the requested format and its dataset is intact."""
    if not run.manifest.exists():
        return None
    manifest = json.loads(run.manifest.read_text())
    dataset = run.dir / manifest["dataset_file"]
    merged_as = (manifest["format"], manifest["filters_config"], manifest["responses"].get("keep_unfinished", False),
                 manifest.get("hf_dataset") is not None)
    wanted = (domino.dataset.format, domino.filters.model_dump(mode="json"), domino.responses.keep_unfinished,
              domino.dataset.hf_dataset)
    parquet = manifest.get("hf_dataset_file")
    intact = dataset.exists() and (not domino.dataset.hf_dataset or bool(parquet and (run.hf_dataset / parquet).exists()))
    if merged_as != wanted or not intact:
        return None  # same samples, other format, filters, response policy or exports: rank 0 merges again
    return SynthesisResult(dataset=dataset, manifest=manifest)


def _generate_shards(domino, base_model, model, tokenizer, domain, shards, todo, run: SynthesisRun, rank: int) -> None:
    settings, refs = domino.synthesis, domino.references
    if settings.backend == "vllm":
        from axolotl_domino.generate_vllm import VllmSampler

        sampler = VllmSampler(base_model, tokenizer, domain, settings)
    else:
        sampler = PrefixSampler(model, tokenizer, domain, settings, settings.stop)
    total = sum(len(shards[s]) for s in todo)
    with tqdm(total=total, desc=f"domino: sampling from D* (rank {rank})", unit="sample") as progress, closing(sampler):
        for s in todo:
            rows = []
            for sample in sampler.sample_many(shards[s], progress):
                text = sample_text(sample.token_ids, tokenizer, refs.format, refs.chat_role)
                if settings.stop:
                    text = min((text.split(stop)[0] for stop in settings.stop), key=len)
                rows.append(
                    {"index": sample.index, "text": text, "finished": sample.finished, "num_tokens": len(sample.token_ids)}
                )
            write_atomic(run.sample_shard(s), jsonl_bytes(rows))


def _respond_shards(domino, base_model, model, tokenizer, shards, todo, run: SynthesisRun, rank: int,
                    trust_remote_code: bool) -> None:
    """Answers per shard; each batch is journaled as it comes back, so a killed run asks only what is unanswered."""
    settings = domino.responses
    name, trust = (settings.model, settings.trust_remote_code) if settings.model else (base_model, trust_remote_code)
    if settings.endpoint is None and domino.synthesis.backend == "vllm":
        from axolotl_domino.generate_vllm import VllmChat  # the sampler's engine is closed: the GPU is free

        responder = Responder(VllmChat(name, domino.synthesis, trust), settings, domino.synthesis.shard_size)
    else:
        if settings.endpoint is None and (name != base_model or model is None):  # base weights not loaded yet
            tokenizer, model = load_model(name, rank_device(), trust, cpu_bf16=use_cpu_bf16(domino.cpu_bf16))
        responder = Responder.of(settings, model, tokenizer, domino.synthesis.decode)
    total = sum(len(shards[s]) for s in todo)
    with tqdm(total=total, desc=f"domino: answering samples (rank {rank})", unit="sample") as progress:
        for s in todo:
            journal = run.response_journal(s)
            rows = recover_journal(journal)
            answered_before = {row["index"] for row in rows}
            usable = [row for row in read_jsonl(run.sample_shard(s)) if _usable(row, domino)]
            # Shortest first, so each batch pads little; a journal from any earlier order is honoured by index.
            samples = sorted((row for row in usable if row["index"] not in answered_before),
                             key=lambda row: (len(row["text"]), row["index"]))
            progress.update(len(shards[s]) - len(samples))
            step = responder.batch_size([row["text"] for row in samples])
            for start in range(0, len(samples), step):
                batch = samples[start : start + step]
                answers = responder.answer([row["text"] for row in batch], sample_seed(domino.synthesis.seed + 1, batch[0]["index"]))
                answered = [{"index": row["index"], "response": text, "finished": ok} for row, (text, ok) in zip(batch, answers)]
                append_jsonl(journal, answered)
                rows += answered
                progress.update(len(batch))
            # Index order, whatever order they were asked in: a resumed shard lists its rows as an uninterrupted one.
            write_atomic(run.response_shard(s), jsonl_bytes(sorted(rows, key=lambda row: row["index"])))
            journal.unlink(missing_ok=True)
    if hasattr(responder.generator, "close"):  # a vLLM engine: give its GPU memory back
        responder.generator.close()


@contextmanager
def _timed(what: str) -> Iterator[None]:
    """Log how long a phase of the stage took (the per-phase times of bench/quickstart_e2e.py)."""
    started = time.perf_counter()
    yield
    LOG.info("%s in %.1f s", what, time.perf_counter() - started)


def _local_dtype(domino: DominoConfig) -> str:
    """The dtype of the Hugging Face models this rank runs (sampler, responder, judge)."""
    return str(inference_dtype(rank_device(), use_cpu_bf16(domino.cpu_bf16))).removeprefix("torch.")


def _usable(row: dict[str, Any], domino: DominoConfig) -> bool:
    return bool(row["text"]) and (row["finished"] or domino.synthesis.keep_unfinished)


def _merge(domino, base_model, adapter_sha, run: SynthesisRun, num_shards: int, world_size: int, seconds: float) -> SynthesisResult:
    """Rank 0: every shard in index order -> dataset file, card, manifest (last)."""
    counts = {"generated": 0, "dropped_unfinished": 0, "dropped_empty": 0, "dropped_response_unfinished": 0}
    responses: dict[int, dict[str, Any]] = {}
    if domino.responses.enabled:
        for s in range(num_shards):
            responses.update({row["index"]: row for row in read_jsonl(run.response_shard(s))})
    rows = []
    for s in range(num_shards):
        for row in read_jsonl(run.sample_shard(s)):
            counts["generated"] += 1
            if not row["text"]:
                counts["dropped_empty"] += 1
            elif not (row["finished"] or domino.synthesis.keep_unfinished):
                counts["dropped_unfinished"] += 1
            elif domino.responses.enabled and not (responses[row["index"]]["finished"] or domino.responses.keep_unfinished):
                counts["dropped_response_unfinished"] += 1
            else:
                answer = responses[row["index"]] if domino.responses.enabled else None
                rows.append({"index": row["index"], "instruction": row["text"], "finished": row["finished"],
                             "response": answer and answer["response"], "response_finished": answer and answer["finished"]})
    references = load_references(domino).texts
    with _timed("domino: filters"):
        journal = run.judge_journal(judge_identity(domino.filters.judge, base_model))
        rows, reports = apply_filters(rows, domino.filters, references, base_model=base_model,
                                      cpu_bf16=use_cpu_bf16(domino.cpu_bf16), judge_journal=journal,
                                      decode=domino.synthesis.decode)
    counts["removed_by_filters"] = sum(report.removed for report in reports)
    counts["kept"] = len(rows)
    records = [record(domino.dataset.format, row["instruction"], row["response"]) for row in rows]
    dataset = write_dataset(records, run, domino.dataset.format)
    parquet = None
    if domino.dataset.hf_dataset:
        parquet = write_hf_dataset([{**rec, **_provenance(row, domino, reports)} for rec, row in zip(records, rows)], run)
    adapter = source_adapter(domino)
    induction = json.loads((adapter / METADATA_FILE).read_text()) if (adapter / METADATA_FILE).exists() else {}
    manifest = {
        "format": domino.dataset.format,
        "dataset_file": dataset.name,
        "dataset_sha256": file_sha256(dataset),
        "counts": counts,
        "synthesis": domino.synthesis.model_dump(),
        "responses": domino.responses.model_dump(),
        "filters_config": domino.filters.model_dump(mode="json"),
        "filters": [asdict(report) for report in reports],
        "config_sha256": run.dir.name,
        "base_model": base_model,
        "responder_model": (domino.responses.model or base_model) if domino.responses.enabled else None,
        "adapter": str(adapter),
        "adapter_sha256": adapter_sha,
        "references_sha256": induction.get("references_sha256", "unknown"),
        "num_references": induction.get("num_references", "unknown"),
        "world_size": world_size,
        # Rank 0's local models as resolved at the merge (not keyed: the same distribution, other rounding).
        "local_model_dtype": _local_dtype(domino),
        "seconds_rank0_this_run": round(seconds, 2),
        "hf_dataset": run.hf_dataset.name if domino.dataset.hf_dataset else None,
        "hf_dataset_file": parquet,
    }
    if domino.dataset.hf_dataset:
        write_hf_card(run, manifest, domino.dataset.license)
    write_manifest(run, manifest)
    journal.unlink(missing_ok=True)
    for directory in (run.dir, run.samples, run.responses):
        if directory.exists():
            remove_temporaries(directory)
    LOG.info("domino: wrote %d of %d synthetic samples to %s", counts["kept"], counts["generated"], dataset)
    card = write_scorecard(domino, [row["instruction"] for row in rows], references, run.dir)
    if card is not None and domino.dataset.hf_dataset:
        write_hf_card(run, manifest, domino.dataset.license, (run.dir / "scorecard.md").read_text())
    return SynthesisResult(dataset=dataset, manifest=manifest)


def _provenance(row: dict[str, Any], domino: DominoConfig, reports: list) -> dict[str, Any]:
    """Where a kept row came from: its sample index and random stream, whether it and its answer ended at EOS,
    and the filters it passed (the Hugging Face dataset's `domino_*` columns)."""
    provenance = {
        "domino_index": row["index"],
        "domino_sample_seed": sample_seed(domino.synthesis.seed, row["index"]),
        "domino_sample_finished": row["finished"],
        "domino_filters_passed": [report.name for report in reports],
    }
    if domino.responses.enabled:
        provenance["domino_response_finished"] = row["response_finished"]
    return provenance


def write_scorecard(
    domino: DominoConfig, synthetic: list[str], references: list[str], run_dir: Path
) -> dict[str, Any] | None:
    """Diversity / memorisation / fidelity of the synthetic set (`score/`), next to the dataset.

    Runs after the manifest: a scorecard failure must not cost the synthesised data; it is logged
    with the fix and `axolotl domino report CONFIG` computes the scorecard again.
    """
    from axolotl_domino.score import run_scorecard

    try:
        card = run_scorecard(domino.score, synthetic, references, run_dir)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal to the dataset
        LOG.error("domino: scorecard failed (%s); rerun it with `axolotl domino report CONFIG`", exc)
        return None
    if card is not None:
        LOG.info("domino: scorecard in %s", run_dir / "scorecard.md")
    return card


def rescore(domino: DominoConfig, result: SynthesisResult) -> dict[str, Any] | None:
    """The scorecard of a finished dataset, computed again (`axolotl domino report`), even if `score` is off."""
    synthetic = [instruction(result.manifest["format"], row) for row in read_jsonl(result.dataset)]
    settings = domino.model_copy(update={"score": domino.score.model_copy(update={"enabled": True})})
    return write_scorecard(settings, synthetic, load_references(domino).texts, result.dataset.parent)
