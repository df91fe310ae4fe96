"""The one-YAML pipeline: preflight -> induction -> synthesis -> Axolotl's own SFT on the synthetic dataset.

Called from the plugin's `load_datasets` hook on every rank. Each stage runs in a child process
(`launch.py`), except synthesis on one CPU process (`in_process`). Ranks wait for each other's outputs by polling files, never in a collective, so a
long stage cannot trip `ddp_timeout`. A stage whose output is up to date (keyed by the hash of its
inputs) is skipped.

- induction: global rank 0 runs `axolotl train` on a derived `adapter: domino_prompt` YAML,
  data-parallel over this node's ranks (torchrun) when there are several; it resumes from its
  last complete checkpoint after a crash;
- synthesis: every rank runs its share of shards (`synthesize.py`, through `child.py`, or in this process
  when it is the only one, on a CPU), rank 0 merges;
- SFT: `cfg.datasets` is pointed at the content-addressed synthetic file and Axolotl trains
  with the YAML's adapter, DeepSpeed and so on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from axolotl_domino import child
from axolotl_domino.args import PUSH_FIELDS, DominoConfig, check_zero3_induction, parse_domino
from axolotl_domino.endpoint import check_endpoint
from axolotl_domino.estimate import duration, model_config
from axolotl_domino.files import digest, write_atomic
from axolotl_domino.launch import Launch, StageError, free_port, lock_output_dir, log_to, run_child, stage_env
from axolotl_domino.layout import Layout
from axolotl_domino.publish import ADAPTER_FILES, check_hub_access, push_folder
from axolotl_domino.references import chat_turn_header, load_references
from axolotl_domino.score.scorecard import JSON_FILE as SCORECARD_JSON, load_heldout
from axolotl_domino.shards import Heartbeat, check_shared_dir, launch_id, wait_until
from axolotl_domino.synthesize import SynthesisResult, current_run, finished, synthesize
from axolotl_domino.tracking import flat_numbers, report_synthesis

LOG = logging.getLogger("axolotl.integrations.domino.pipeline")

SYNTHETIC = "domino:synthetic"  # a `datasets:` path the plugin replaces with the synthetic file
# Model-loading and precision keys of the outer YAML that the induction run inherits (part of its key).
MODEL_KEYS = ("base_model_config", "tokenizer_config", "trust_remote_code", "bf16", "fp16", "tf32", "attn_implementation")
# Experiment trackers the induction run reports to as well, as its own run (not part of its key: D* is the same).
TRACKER_KEYS = (
    "use_tensorboard", "use_wandb", "wandb_project", "wandb_entity", "wandb_mode", "wandb_watch", "wandb_name",
    "use_mlflow", "mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name",
    "use_comet", "comet_api_key", "comet_workspace", "comet_project_name", "comet_mode", "comet_online",
    "use_trackio", "trackio_project_name", "trackio_run_name", "trackio_space_id",
)
RUN_NAME_KEYS = ("wandb_name", "mlflow_run_name", "trackio_run_name")


def inherited_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The outer YAML's model, precision and tracker keys that are set, for the induction run.

    A named tracker run gets a `-domino-induction` suffix: the induction is a run of its own in the same
    project (an inherited wandb_run_id would resume the SFT's run, so it is not inherited).
    `domino.induction.axolotl` overrides any of them (e.g. `use_wandb: false`).
    """
    settings = {key: config[key] for key in MODEL_KEYS + TRACKER_KEYS if config.get(key) is not None}
    for key in RUN_NAME_KEYS:
        if key in settings:
            settings[key] = f"{settings[key]}-domino-induction"
    return settings


# --- checks before any heavy work -------------------------------------------------------------


def preflight(domino: DominoConfig, base_model: str, trust_remote_code: bool = False, planning: bool = False) -> None:
    """Fail in seconds, naming the key and the fix, on inputs that would fail an hour in.

    `planning` (`axolotl domino plan`, perhaps on a login node for a cluster's YAML): nothing is written, the
    output folder need not be reachable from here, and a Hub model's config may come from those we ship.
    """
    from transformers import AutoTokenizer

    if base_model.startswith((".", "/", "~")) and not Path(base_model).expanduser().exists():
        raise StageError(
            f"base_model: {base_model} does not exist. For the embedded model run `make model` or "
            f"`axolotl domino prepare-model smollm2-135m-instruct --output {base_model}`."
        )
    output = Path(domino.output_dir)
    try:
        if not planning:
            output.mkdir(parents=True, exist_ok=True)
            probe = output / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as exc:
        raise StageError(f"domino.output_dir: cannot write to {output} ({exc.strerror}); choose a writable folder.") from None
    check_zero3_induction(domino.induction.axolotl.get("deepspeed"), domino.induction.keep, "domino.induction.axolotl.deepspeed")
    load_references(domino)
    for repo, key in ((domino.induction.push_to_hub, "domino.induction.push_to_hub"),
                      (domino.dataset.push_to_hub, "domino.dataset.push_to_hub")):
        if repo:
            check_hub_access(key)
    for enabled, endpoint, key in (
        (domino.responses.enabled, domino.responses.endpoint, "domino.responses.endpoint"),
        (domino.filters.judge.enabled, domino.filters.judge.endpoint, "domino.filters.judge.endpoint"),
    ):
        if enabled and endpoint is not None:
            check_endpoint(endpoint, key)
    if domino.score.heldout_path:
        load_heldout(domino.score.heldout_path, domino.score.heldout_field)  # read by induction and the scorecard
    if domino.synthesis.adapter is None:
        context = getattr(model_config(base_model, trust_remote_code, shipped=planning).get_text_config(),
                          "max_position_embeddings", None)
        needed = domino.induction.num_domain_tokens + domino.induction.num_sample_tokens + domino.references.max_tokens + 1
        if context is not None and needed > context:
            raise StageError(
                f"domino.references.max_tokens: k + l + max_tokens + EOS = {needed} tokens exceeds the model's "
                f"context of {context}; lower max_tokens, num_domain_tokens or num_sample_tokens."
            )
    if domino.references.format == "chat":
        chat_turn_header(AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code), domino.references.chat_role)


# --- induction -------------------------------------------------------------------------------


# The induction child's `domino:` block. Its diagnostics sample with the synthesis settings and measure with the
# scorecard's (embedder, near-copy threshold, held-out set).
_CHILD_BLOCKS = {"references", "induction", "synthesis", "score", "output_dir", "cpu_safe_defaults"}
# What only the diagnostics read: it changes D* only when `keep: best` chooses by them.
_EVAL_ONLY_BLOCKS = ("synthesis", "score")
_EVAL_ONLY_KEYS = ("eval_steps", "eval_samples", "eval_references", "best_max_near_copy_share")


def induction_config(domino: DominoConfig, base_model: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `adapter: domino_prompt` Axolotl config the induction stage trains with."""
    ind, layout = domino.induction, Layout.of(domino)
    config = {
        "base_model": base_model,
        **settings,
        "plugins": ["axolotl_domino.DominoPlugin"],
        "adapter": "domino_prompt",
        # Publishing is the parent's job after the stage: the child never sees where D* goes.
        "domino": domino.model_dump(mode="json", exclude_none=True, include=_CHILD_BLOCKS,
                                    exclude={"induction": PUSH_FIELDS}),
        "sequence_len": domino.references.max_tokens + 1,
        "sample_packing": False,
        "micro_batch_size": ind.micro_batch_size,
        "gradient_accumulation_steps": ind.gradient_accumulation_steps,
        "num_epochs": ind.num_epochs,
        "learning_rate": ind.learning_rate,
        "lr_scheduler": ind.lr_scheduler,
        "optimizer": "adamw_torch",
        "seed": ind.seed,  # Axolotl shuffles with cfg.seed (random when unset): same seed, same D*
        "logging_steps": 5,
        **_checkpointing(ind.save_steps),
        "output_dir": str(layout.adapter),
        "dataset_prepared_path": str(layout.induction_prepared),
    }
    if ind.max_steps:
        config["max_steps"] = ind.max_steps
    return {**config, **ind.axolotl}


def _checkpointing(save_steps: int) -> dict[str, Any]:
    if not save_steps:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1, "auto_resume_from_checkpoints": True}


def induction_key(domino: DominoConfig, config: Mapping[str, Any]) -> str:
    """Hash of the induction inputs: reference contents, the derived config (settings, base model).

    How often it checkpoints and where it reports do not change D*, so they are left out; nor do the
    diagnostics' settings, unless `keep: best` chooses D* by them.
    """
    inputs = json.loads(json.dumps(config, default=str))
    for key in TRACKER_KEYS:
        inputs.pop(key, None)
    del inputs["domino"]["references"]["path"]  # the content counts, not where it lies
    del inputs["domino"]["induction"]["save_steps"]
    if domino.induction.keep == "last":
        for block in _EVAL_ONLY_BLOCKS:
            inputs["domino"].pop(block, None)
        for key in _EVAL_ONLY_KEYS:
            inputs["domino"]["induction"].pop(key, None)
    for key in _checkpointing(save_steps=1):  # every key checkpointing can set
        inputs.pop(key, None)
    return digest({"references_sha256": load_references(domino).sha256, "config": inputs})


def _usable_checkpoints(layout: Layout, key: str) -> list[Path]:
    """Keep the checkpoints a resumed run may use: this key's, and only complete ones.

    The Trainer writes trainer_state.json last, so a checkpoint killed mid-write has none (or a cut one).
    """
    checkpoints = sorted(layout.adapter.glob("checkpoint-*"))
    stale = layout.checkpoints_key.exists() and layout.checkpoints_key.read_text().strip() != key
    usable = []
    for checkpoint in checkpoints:
        try:
            complete = not stale and bool(json.loads((checkpoint / "trainer_state.json").read_text()))
        except (OSError, ValueError):
            complete = False
        if complete:
            usable.append(checkpoint)
        else:
            LOG.info("domino: removing %s checkpoint %s", "stale" if stale else "incomplete", checkpoint)
            shutil.rmtree(checkpoint)
    write_atomic(layout.checkpoints_key, key.encode())
    return usable


def induction_up_to_date(layout: Layout, key: str) -> bool:
    return layout.induction_done.exists() and json.loads(layout.induction_done.read_text()).get("key") == key


class StagePlan(NamedTuple):
    action: str  # run, resume from what, or skip and why
    last_seconds: float | None  # what the stage took when it last ran here, if it did


def stage_plans(domino: DominoConfig, base_model: str, settings: Mapping[str, Any]) -> dict[str, StagePlan]:
    """What `axolotl train` would do at each DOMINO stage now, read from `output_dir` without changing it."""
    layout, plans = Layout.of(domino), {}
    if domino.synthesis.adapter:
        plans["induction"] = StagePlan("skip: D* given by domino.synthesis.adapter", None)
    else:
        up_to_date, note = induction_done_as(domino, base_model, settings)
        if up_to_date:
            plans["induction"] = StagePlan("skip: up to date" + note, json.loads(layout.induction_done.read_text()).get("seconds"))
        else:
            key = induction_key(domino, induction_config(domino, base_model, settings))
            mine = layout.checkpoints_key.exists() and layout.checkpoints_key.read_text().strip() == key
            saved = [c for c in sorted(layout.adapter.glob("checkpoint-*")) if (c / "trainer_state.json").is_file()]
            plans["induction"] = StagePlan(f"resume from {saved[-1].name}" if mine and saved else "run", None)
    if not plans["induction"].action.startswith("skip"):
        plans["synthesis"] = StagePlan("run, on the new D*", None)
        return plans
    result = finished(domino, base_model)
    if result is not None:
        plans["synthesis"] = StagePlan("skip: up to date", result.manifest.get("seconds_rank0_this_run"))
        return plans
    run = current_run(domino, base_model)[0]
    total = math.ceil(domino.synthesis.num_samples / domino.synthesis.shard_size)
    done = len(list(run.samples.glob("samples-*.jsonl"))), len(list(run.responses.glob("responses-*.jsonl")))
    if any(done):
        answered = f", {done[1]} of {total} answered" if domino.responses.enabled else ""
        plans["synthesis"] = StagePlan(f"resume: {done[0]} of {total} sample shards done{answered}", None)
    else:
        plans["synthesis"] = StagePlan("run", None)
    return plans


# Resolved per node (`bf16: auto`, the CPU-safe defaults): a CPU login node resolves them otherwise than the GPU
# node that trained, which must not make `report` or `plan` there call a finished induction stale.
NODE_RESOLVED_KEYS = ("bf16", "fp16", "tf32", "attn_implementation")


def induction_done_as(domino: DominoConfig, base_model: str, settings: Mapping[str, Any]) -> tuple[bool, str]:
    """(whether D* is up to date for these inputs, a note when only as resolved on the node that trained it).

    The inputs match when their key does, or when it does with this node's `NODE_RESOLVED_KEYS` replaced by
    those of the config the induction ran with (`induction/induce-<key>.yaml`)."""
    layout = Layout.of(domino)
    if induction_up_to_date(layout, induction_key(domino, induction_config(domino, base_model, settings))):
        return True, ""
    done = json.loads(layout.induction_done.read_text()) if layout.induction_done.exists() else {}
    trained = layout.induction / str(done.get("config", ""))
    if not done or not trained.is_file():
        return False, ""
    there = {key: value for key, value in (yaml.safe_load(trained.read_text()) or {}).items() if key in NODE_RESOLVED_KEYS}
    as_there = {**{k: v for k, v in settings.items() if k not in NODE_RESOLVED_KEYS}, **there}
    if done["key"] == induction_key(domino, induction_config(domino, base_model, as_there)):
        here = {key: settings.get(key) for key in there}
        return True, f" (with {there} as resolved where it ran; this node resolves {here})"
    return False, ""


def induction_status(domino: DominoConfig, base_model: str, settings: Mapping[str, Any]) -> str:
    """One line on the induction stage for these inputs (`axolotl domino report`)."""
    if domino.synthesis.adapter:
        return f"induction: skipped, D* given by domino.synthesis.adapter ({domino.synthesis.adapter})"
    up_to_date, note = induction_done_as(domino, base_model, settings)
    return f"induction: {'up to date' + note if up_to_date else 'missing or stale'} ({Layout.of(domino).adapter})"


def run_induction(domino: DominoConfig, base_model: str, settings: Mapping[str, Any], launch: Launch,
                  estimates: StageEstimates | None = None) -> Path:
    """Induce D* (rank 0, data-parallel over this node's ranks) unless up to date; return the adapter folder.

    With `induction.push_to_hub`, rank 0 then pushes it (an unchanged adapter makes no new Hub commit)."""
    adapter = _induce(domino, base_model, settings, launch, estimates)
    repo = domino.induction.push_to_hub
    if repo and launch.rank == 0:
        push_folder(adapter, repo, "model", domino.induction.private, ADAPTER_FILES, "domino.induction.push_to_hub")
    return adapter


def _induce(domino: DominoConfig, base_model: str, settings: Mapping[str, Any], launch: Launch,
            estimates: StageEstimates | None) -> Path:
    layout = Layout.of(domino)
    config = induction_config(domino, base_model, settings)
    key = induction_key(domino, config)
    if induction_up_to_date(layout, key):
        LOG.info("domino: induction up to date (%s), skipping", layout.adapter)
        return layout.adapter
    if launch.rank != 0:
        wait_until(lambda: induction_up_to_date(layout, key), "rank 0 to finish domain induction",
                   alive=[layout.heartbeat(0)], stale_after_s=domino.wait_timeout_s)
        return layout.adapter
    layout.induction_done.unlink(missing_ok=True)
    if _usable_checkpoints(layout, key):
        LOG.info("domino: resuming the induction from its last checkpoint in %s", layout.adapter)
    config_path = layout.induction_config(key)
    write_atomic(config_path, yaml.safe_dump(config, sort_keys=False).encode())
    command = ["axolotl", "train", str(config_path)]
    if launch.local_world_size > 1:
        command += ["--launcher", "torchrun", "--", f"--nproc_per_node={launch.local_world_size}", f"--master_port={free_port()}"]
    else:  # in-process: no `accelerate launch` layer holding its own copy of torch in memory
        command += ["--launcher", "python"]
    if estimates is not None:
        estimates.log("induction")
    LOG.info("domino: inducing the domain: %s", " ".join(command))
    started = time.monotonic()
    run_child(command, layout.induction_log(key), stage_env(launch.local_world_size))
    done = {"key": key, "config": config_path.name, "seconds": round(time.monotonic() - started, 1)}
    write_atomic(layout.induction_done, json.dumps(done).encode())
    for checkpoint in layout.adapter.glob("checkpoint-*"):  # D* is final; S and optimizer copies only cost disk now
        shutil.rmtree(checkpoint)
    return layout.adapter


# --- synthesis -------------------------------------------------------------------------------


def check_vllm_launch(domino: DominoConfig, launch: Launch) -> None:
    """vLLM's tensor parallelism needs one process owning several GPUs; several ranks each own one."""
    settings = domino.synthesis
    if settings.backend == "vllm" and settings.tensor_parallel_size > 1 and launch.world_size > 1:
        raise StageError(
            f"domino.synthesis.tensor_parallel_size: {settings.tensor_parallel_size} needs one process that owns "
            f"that many GPUs, but this run has {launch.world_size} ranks, one per GPU. Set tensor_parallel_size: 1 "
            "(each rank runs its own engine on its own GPU), or synthesise in one process first "
            "(`axolotl domino synthesize CONFIG` with the GPUs visible) and train after."
        )


def in_process(domino: DominoConfig, launch: Launch) -> bool:
    """Whether the synthesis stage runs in this process rather than a child: on one CPU process with the HF
    backend, where a child buys no isolation worth its start-up (imports: 8 s of the quickstart). GPUs keep the
    child, which gives its memory back to the SFT in full; vLLM and several ranks keep it too."""
    import torch

    return launch.world_size == 1 and domino.synthesis.backend == "hf" and not torch.cuda.is_available()


def synthesis_env(domino: DominoConfig, launch: Launch) -> dict[str, str]:
    """The synthesis child's environment. vLLM starts its engine on the first visible GPU, so with several ranks
    on a node each rank's child sees only its own GPU (and is local rank 0 of it)."""
    env = stage_env(launch.local_world_size, LOCAL_RANK=str(launch.local_rank))
    if domino.synthesis.backend == "vllm" and launch.local_world_size > 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            import torch

            visible = ",".join(str(i) for i in range(torch.cuda.device_count()))
        devices = [d for d in visible.split(",") if d]
        if devices:
            env.update(CUDA_VISIBLE_DEVICES=devices[launch.local_rank % len(devices)], LOCAL_RANK="0")
    return env


def run_synthesis(
    domino: DominoConfig, base_model: str, launch: Launch, trust_remote_code: bool = False,
    config: Mapping[str, Any] | None = None, estimates: StageEstimates | None = None,
) -> SynthesisResult:
    """Every rank generates its shards in a child process; rank 0's child merges, then rank 0 reports the stage
    to the trackers `config` (the outer YAML) turns on."""
    done = finished(domino, base_model)
    if done is not None:
        LOG.info("domino: synthesis up to date (%s), skipping", done.dataset)
        return done
    if estimates is not None:
        estimates.log("synthesis", "responses", "filters", "scorecard")
    LOG.info("domino: synthesising %d samples from D* (rank %d)", domino.synthesis.num_samples, launch.rank)
    log = Layout.of(domino).synthesis_log(launch.rank)
    if in_process(domino, launch):
        LOG.info("domino: synthesis runs in this process (one CPU process: a child would only add its start-up)")
        with log_to(log):
            synthesize(domino, base_model, launch.rank, launch.world_size, trust_remote_code)
    else:
        config_path = child.write_config(domino, base_model, trust_remote_code)
        run_child(child.command(config_path, launch.rank, launch.world_size), log, synthesis_env(domino, launch))
    result = finished(domino, base_model)
    if result is None:
        raise StageError(f"domino: synthesis finished without a manifest in {Layout.of(domino).synthesis}; see its logs there")
    if launch.rank == 0 and config and config.get("output_dir"):
        _report_synthesis(result, config)
    return result


def _report_synthesis(result: SynthesisResult, config: Mapping[str, Any]) -> None:
    """Counts, throughput, scorecard metrics and plots of the stage that just ran, to the user's trackers."""
    manifest, folder = result.manifest, result.dataset.parent
    metrics = {f"counts/{k}": float(v) for k, v in manifest["counts"].items()}
    seconds = manifest["seconds_rank0_this_run"]
    metrics["seconds"] = seconds
    if seconds > 0:
        metrics["samples_per_s"] = manifest["counts"]["generated"] / seconds
    scorecard = folder / SCORECARD_JSON
    if scorecard.is_file():
        metrics.update({f"scorecard/{k}": v for k, v in flat_numbers(json.loads(scorecard.read_text())).items()})
    used = report_synthesis(config, str(config["output_dir"]), metrics, sorted(folder.glob("*.png")))
    if used:
        LOG.info("domino: synthesis counts, throughput and scorecard sent to %s", " and ".join(used))


# --- the pipeline ----------------------------------------------------------------------------


def run_pipeline(cfg: Any, launch: Launch | None = None) -> SynthesisResult:
    """Induction then synthesis for an Axolotl config; point its `datasets:` at the synthetic file."""
    launch = launch or Launch.from_env()
    domino = parse_domino(cfg.domino)  # Axolotl hands the block over as a dict
    base_model = str(cfg.base_model)
    preflight(domino, base_model, bool(cfg.trust_remote_code))
    check_vllm_launch(domino, launch)
    layout = Layout.of(domino)
    if launch.world_size > 1:  # ranks wait for each other through files: they must all see this folder
        check_shared_dir(layout.launch_markers(launch_id()), launch.rank, launch.world_size, domino.wait_timeout_s)
    if launch.rank == 0:
        lock_output_dir(layout)
    settings = inherited_settings(cfg)
    estimates = StageEstimates(domino, base_model, cfg, settings, launch)
    with Heartbeat(layout.heartbeat(launch.rank)) if launch.world_size > 1 else nullcontext():
        if domino.synthesis.adapter is None:  # an explicit D* skips induction
            run_induction(domino, base_model, settings, launch, estimates)
        result = run_synthesis(domino, base_model, launch, bool(cfg.trust_remote_code), cfg, estimates)
    use_synthetic_dataset(cfg, result, domino.synthesis.min_kept)
    estimates.log("sft", kept=result.manifest["counts"]["kept"])
    return result


class StageEstimates:
    """The plan's estimate of each stage that will run (`estimate.plan_run`, what `axolotl domino plan` prints),
    logged by global rank 0 as the stage starts, so that a CPU user sees "induction: about 14 min" before waiting.

    Made once, before the first stage: the stages' code is timed on a slice of the model for the stages that will
    run (seconds to a minute, logged). An estimate that cannot be made is logged as such; it never stops the run."""

    def __init__(self, domino: DominoConfig, base_model: str, cfg: Any, settings: Mapping[str, Any], launch: Launch):
        self.plan = None
        if launch.rank != 0:
            return
        from axolotl_domino.estimate import STAGES, plan_run

        try:
            actions = stage_plans(domino, base_model, settings)
            will_run = {s for s in STAGES if not (actions.get(s) or actions["synthesis"]).action.startswith("skip")}
            LOG.info("domino: estimating the stages that will run, timed on a slice of the model here")
            raw = {key: value for key, value in dict(cfg).items() if value is not None}
            self.plan = plan_run(domino, base_model, raw, load_references(domino).texts, launch.world_size,
                                 only=will_run | {"sft"})
            LOG.info("domino: estimated the stages in %.1f s (%s)", self.plan.seconds,
                     ", ".join(stage.stage for stage in self.plan.stages))
        except Exception as exc:  # noqa: BLE001 - an estimate is advice; the run goes on without it
            LOG.warning("domino: no time estimates for this run (%s: %s); `axolotl domino plan CONFIG` shows why",
                        type(exc).__name__, exc)

    def log(self, *stages: str, kept: int | None = None) -> None:
        """One line for `stages` (run together): their estimated time and the largest peak memory."""
        if self.plan is None:
            return
        found = [self.plan.by_stage[stage] for stage in stages if stage in self.plan.by_stage]
        if kept is not None and "sft" in stages:
            try:
                found = [self.plan.sft_with(kept)]
            except Exception as exc:  # noqa: BLE001 - as above
                LOG.warning("domino: no time estimate for the SFT (%s: %s)", type(exc).__name__, exc)
                return
        if not found:
            return
        seconds = sum(stage.seconds for stage in found)
        parts = ", ".join(f"{stage.stage} {duration(stage.seconds)}" for stage in found) if len(found) > 1 else found[0].basis
        LOG.info("domino: %s: about %s, peak %.2f GiB (the plan's estimate: %s; `axolotl domino plan CONFIG` for all "
                 "stages)", " + ".join(stage.stage for stage in found), duration(seconds),
                 max(stage.peak_bytes for stage in found) / 2**30, parts)


def _why_lost(counts: dict[str, int]) -> str:
    """The fix for each way samples were lost, naming the keys to change."""
    fixes = {
        "dropped_unfinished": "samples hit max_new_tokens before EOS: raise domino.synthesis.max_new_tokens "
        "or set domino.synthesis.keep_unfinished: true",
        "dropped_response_unfinished": "responses hit max_new_tokens before EOS: raise "
        "domino.responses.max_new_tokens or set domino.responses.keep_unfinished: true",
        "dropped_empty": "samples were empty (EOS first): train the domain tokens longer or sample with a "
        "higher domino.synthesis.temperature",
        "removed_by_filters": "the filters removed the rest: loosen or disable them under domino.filters "
        "(the dataset card lists what each removed)",
    }
    return "; ".join(fix for key, fix in fixes.items() if counts.get(key)) or "check the dataset card."


def use_synthetic_dataset(cfg: Any, result: SynthesisResult, min_kept: int = 1) -> None:
    """Replace `domino:synthetic` entries of `datasets:` (or append) with the synthetic file.

    Fewer than `min_kept` kept samples is an error; fewer than half of those generated, a warning: either
    way the message gives the counts and the fix before any SFT starts.
    """
    counts = result.manifest["counts"]
    kept, generated = counts["kept"], counts["generated"]
    if kept == 0:
        raise StageError(f"domino: none of the {generated} synthetic samples was kept ({counts}); {_why_lost(counts)}")
    if kept < min_kept:
        raise StageError(
            f"domino: only {kept} of {generated} synthetic samples were kept, fewer than domino.synthesis.min_kept "
            f"({min_kept}) ({counts}); {_why_lost(counts)}"
        )
    if kept < generated / 2:
        LOG.warning("domino: only %d of %d synthetic samples were kept (%s); %s. Set domino.synthesis.min_kept to make "
                    "this an error.", kept, generated, counts, _why_lost(counts))
    from axolotl.utils.dict import DictDefault  # Axolotl reads dataset entries by attribute

    entry = {"path": str(result.dataset), "type": result.manifest["format"], "ds_type": "json"}
    datasets = [DictDefault(d) for d in (cfg.datasets or [])]
    if any(d.get("path") == SYNTHETIC for d in datasets):
        datasets = [DictDefault({**d, **entry}) if d.get("path") == SYNTHETIC else d for d in datasets]
    else:
        datasets.append(DictDefault(entry))
    cfg.datasets = datasets
    LOG.info("domino: fine-tuning on %s (%d samples)", result.dataset, result.manifest["counts"]["kept"])
