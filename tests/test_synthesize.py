"""The synthesis stage on a tiny saved model: formats, manifest, resumption after kill -9, two ranks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_domino.args import DominoConfig, InductionConfig
from axolotl_domino.files import read_jsonl
from axolotl_domino.hf import sample_seed
from axolotl_domino.induce import DominoPromptModel
from axolotl_domino.layout import MANIFEST_FILE
from axolotl_domino.respond import Responder
from axolotl_domino.synthesize import synthesize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A D* adapter (k = 4) saved by the domino_prompt model over the tiny model."""
    path = tmp_path_factory.mktemp("adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    settings = InductionConfig(num_domain_tokens=4, num_sample_tokens=0)
    DominoPromptModel(model, tokenizer, settings, 3, {"base_model": str(tiny_model_dir), "references_sha256": "ab" * 32}).save_pretrained(str(path))
    return path


def _config(tmp_path: Path, adapter: Path, **overrides) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"text": "write a function"}\n{"text": "find the sum"}\n')
    config = {
        "references": {"path": str(refs)},
        "output_dir": str(tmp_path / "domino"),
        "synthesis": {"adapter": str(adapter), "num_samples": 10, "shard_size": 4, "max_new_tokens": 8, "batch_size": 3},
        "score": {"enabled": False},  # the scorecard has its own tests; one test below checks it is written
    }
    for key, value in overrides.items():
        config.setdefault(key, {}).update(value) if isinstance(value, dict) else config.update({key: value})
    return config


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_completion_dataset_manifest_scorecard_and_skip(tiny_model_dir, adapter, tmp_path):
    domino = DominoConfig.model_validate(
        _config(tmp_path, adapter, synthesis={"keep_unfinished": True}, score={"enabled": True, "projection": "pca"})
    )
    result = synthesize(domino, str(tiny_model_dir), rank=0, world_size=1)
    rows = read_jsonl(result.dataset)
    assert domino.dataset.format == "completion" and all(set(r) == {"text"} for r in rows)
    counts = result.manifest["counts"]
    assert counts["generated"] == 10 and counts["kept"] == len(rows) == 10 - counts["dropped_empty"]
    assert result.dataset.name == f"synthetic-{_sha(result.dataset)[:16]}.completion.jsonl"
    assert result.manifest["references_sha256"] == "ab" * 32 and result.manifest["num_references"] == 3
    assert (result.dataset.parent / "README.md").read_text().startswith("# DOMINO synthetic dataset")
    assert len(list((result.dataset.parent / "samples").glob("samples-*.jsonl"))) == 3  # 4 + 4 + 2
    card = json.loads((result.dataset.parent / "scorecard.json").read_text())
    assert card["diversity"] and (result.dataset.parent / "projection.png").read_bytes()[:4] == b"\x89PNG"

    before = (result.dataset.parent / MANIFEST_FILE).stat().st_mtime_ns
    again = synthesize(domino, str(tiny_model_dir), rank=0, world_size=1)
    assert again.dataset == result.dataset
    assert (result.dataset.parent / MANIFEST_FILE).stat().st_mtime_ns == before  # nothing rewritten


@pytest.mark.parametrize("format", ["alpaca", "chat_template"])
def test_instruction_formats_with_responses(tiny_model_dir, adapter, tmp_path, format):
    domino = DominoConfig.model_validate(
        _config(
            tmp_path, adapter,
            synthesis={"keep_unfinished": True, "num_samples": 4},
            responses={"enabled": True, "max_new_tokens": 64, "system_prompt": "be short", "batch_size": 2},
            dataset={"format": format},
        )
    )
    result = synthesize(domino, str(tiny_model_dir), rank=0, world_size=1)
    counts = result.manifest["counts"]
    rows = read_jsonl(result.dataset)
    assert len(rows) == counts["kept"] == 4 - counts["dropped_empty"] - counts["dropped_response_unfinished"]
    for row in rows:
        if format == "alpaca":
            assert set(row) == {"instruction", "input", "output"}
        else:
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert result.manifest["responder_model"] == str(tiny_model_dir)


def test_hf_dataset_folder_opens_with_load_dataset_as_the_jsonl_rows_plus_provenance(tiny_model_dir, adapter, tmp_path):
    import yaml
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    domino = DominoConfig.model_validate(_config(
        tmp_path, adapter, synthesis={"keep_unfinished": True, "num_samples": 4},
        responses={"enabled": True, "max_new_tokens": 64, "batch_size": 2, "keep_unfinished": True},
        dataset={"format": "chat_template", "license": "cc-by-4.0"}, score={"enabled": True, "projection": "pca"},
    ))
    result = synthesize(domino, str(tiny_model_dir), rank=0, world_size=1)
    folder = result.dataset.parent / "hf_dataset"
    cache = str(tmp_path / "datasets-cache")  # one cache for every folder opened here, as a user's would be
    loaded = load_dataset(str(folder), split="train", cache_dir=cache)
    jsonl = read_jsonl(result.dataset)
    assert len(loaded) == len(jsonl) == result.manifest["counts"]["kept"] >= 1
    for hf_row, row in zip(loaded, jsonl):
        assert {key: hf_row[key] for key in row} == row  # the Axolotl columns, unchanged
        assert hf_row["domino_sample_seed"] == sample_seed(domino.synthesis.seed, hf_row["domino_index"])
        assert isinstance(hf_row["domino_sample_finished"], bool) and isinstance(hf_row["domino_response_finished"], bool)
    assert [r["domino_index"] for r in loaded] == sorted(r["domino_index"] for r in loaded)

    text = (folder / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["license"] == "cc-by-4.0" and "synthetic" in metadata["tags"] and metadata["size_categories"] == ["n<1K"]
    assert DatasetCard.load(folder / "README.md").data.license == "cc-by-4.0"
    assert "## Scorecard" in text and str(tiny_model_dir) in text  # the scorecard summary and the base model

    # Another run's folder, opened next with the same cache, gives its own rows (a fixed parquet name named in the
    # card made `datasets` serve the first folder's cached rows for every later one).
    other = DominoConfig.model_validate(_config(tmp_path / "other", adapter, synthesis={"keep_unfinished": True,
                                        "num_samples": 6, "seed": 7}, dataset={"format": "completion"}))
    second = synthesize(other, str(tiny_model_dir), rank=0, world_size=1)
    reloaded = load_dataset(str(second.dataset.parent / "hf_dataset"), split="train", cache_dir=cache)
    assert [{"text": row["text"]} for row in reloaded] == read_jsonl(second.dataset)

    before = {p: p.stat().st_mtime_ns for p in (folder / "data").iterdir()}
    off = DominoConfig.model_validate({**domino.model_dump(), "dataset": {**domino.dataset.model_dump(), "hf_dataset": False}})
    synthesize(off, str(tiny_model_dir), rank=0, world_size=1)  # turning the export off only merges again
    assert {p: p.stat().st_mtime_ns for p in (folder / "data").iterdir()} == before


def test_unfinished_responses_are_dropped_unless_kept_without_generating_again(tiny_model_dir, adapter, tmp_path):
    settings = {"synthesis": {"keep_unfinished": True, "num_samples": 6}, "responses": {"enabled": True, "max_new_tokens": 2}}
    dropped = synthesize(DominoConfig.model_validate(_config(tmp_path, adapter, **settings)), str(tiny_model_dir), rank=0, world_size=1)
    counts = dropped.manifest["counts"]
    assert counts["dropped_response_unfinished"] >= 1  # greedy 2-token answers of a random model rarely end
    assert counts["kept"] == 6 - counts["dropped_empty"] - counts["dropped_response_unfinished"]
    shards = {p: p.stat().st_mtime_ns for p in dropped.dataset.parent.glob("*/*.jsonl")}

    settings["responses"]["keep_unfinished"] = True
    kept = synthesize(DominoConfig.model_validate(_config(tmp_path, adapter, **settings)), str(tiny_model_dir), rank=0, world_size=1)
    assert kept.dataset.parent == dropped.dataset.parent  # same run: only the merge differs
    assert {p: p.stat().st_mtime_ns for p in kept.dataset.parent.glob("*/*.jsonl")} == shards
    counts = kept.manifest["counts"]
    assert counts["dropped_response_unfinished"] == 0 and counts["kept"] == 6 - counts["dropped_empty"]
    assert kept.manifest["responses"]["keep_unfinished"] is True


SCRIPT = """
import json, os, signal, sys
import torch.distributed as dist
from axolotl_domino import files, synthesize as stage
from axolotl_domino.args import DominoConfig
config, model, world, kill = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[4]), sys.argv[5]
if kill.startswith("answers:"):  # kill -9 right after the n-th batch of answers reached the journal
    appended = []

    def append_jsonl(path, rows):
        files.append_jsonl(path, rows)
        appended.append(path)
        if len(appended) == int(kill.split(":")[1]):
            os.kill(os.getpid(), signal.SIGKILL)

    stage.append_jsonl = append_jsonl
elif kill.startswith("verdicts:"):  # kill -9 right after the n-th batch of the judge's verdicts reached its journal
    from axolotl_domino import judge
    appended = []

    def append_jsonl(path, rows):
        files.append_jsonl(path, rows)
        appended.append(path)
        if len(appended) == int(kill.split(":")[1]):
            os.kill(os.getpid(), signal.SIGKILL)

    judge.append_jsonl = append_jsonl
elif kill:  # "<n>:before" or "<n>:after": kill -9 at this run's n-th sample shard, before or after its rename
    n, when = int(kill.split(":")[0]), kill.split(":")[1]
    shards = []

    def write_atomic(path, data):
        if path.name.startswith("samples-"):
            shards.append(path)
        if len(shards) == n and path == shards[-1] and when == "before":  # a torn temporary file, never renamed
            path.with_name(f".{path.name}.tmp-{os.getpid()}").write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        files.write_atomic(path, data)
        if len(shards) == n and path == shards[-1]:
            os.kill(os.getpid(), signal.SIGKILL)

    stage.write_atomic = write_atomic
if world > 1:
    dist.init_process_group("gloo")  # rank and world size come from the process group
stage.synthesize(DominoConfig.model_validate(config), model)
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(config: dict, model: Path, rank: int = 0, world: int = 1, port: int = 0, kill: str = "") -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RANK": str(rank), "WORLD_SIZE": str(world)}
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "LOCAL_RANK": "0"})
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(config), str(model), str(rank), str(world), kill],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def test_kill_9_then_rerun_gives_the_uninterrupted_dataset(tiny_model_dir, adapter, tmp_path):
    settings = {"num_samples": 48, "shard_size": 2, "batch_size": 1, "max_new_tokens": 24, "keep_unfinished": True}
    reference = synthesize(
        DominoConfig.model_validate(_config(tmp_path / "a", adapter, synthesis=settings)), str(tiny_model_dir), 0, 1
    )
    config = _config(tmp_path / "b", adapter, synthesis=settings)
    samples = Path(config["output_dir"]) / "synthesis"
    # Killed right after its 3rd shard was renamed into place, then (resumed) while its 4th was half written.
    for kill, complete in (("3:after", 3), ("4:before", 6)):
        proc = _run(config, tiny_model_dir, kill=kill)
        assert proc.wait(timeout=300) == -9, proc.stderr.read().decode()[-3000:]
        written = sorted(samples.glob("*/samples/samples-*.jsonl"))
        assert len(written) == complete and not list(samples.glob("*/" + MANIFEST_FILE))
        for shard in written:  # whatever sits under a final name is complete
            assert len(read_jsonl(shard)) == 2
    assert len(list(samples.glob("*/samples/.samples-000006.jsonl.tmp-*"))) == 1  # the torn write

    resumed = synthesize(DominoConfig.model_validate(config), str(tiny_model_dir), rank=0, world_size=1)
    indices = [row["index"] for shard in sorted(samples.glob("*/samples/samples-*.jsonl")) for row in read_jsonl(shard)]
    assert indices == list(range(48))
    assert resumed.dataset.read_bytes() == reference.dataset.read_bytes()
    assert not list(samples.glob("**/.*.tmp-*"))


def test_a_run_killed_while_answering_asks_only_the_unanswered_samples_and_gives_the_same_dataset(
    tiny_model_dir, adapter, tmp_path, monkeypatch
):
    settings = {
        "synthesis": {"num_samples": 8, "shard_size": 8, "keep_unfinished": True},
        "responses": {"enabled": True, "max_new_tokens": 6, "batch_size": 2, "keep_unfinished": True},
    }
    reference = synthesize(DominoConfig.model_validate(_config(tmp_path / "a", adapter, **settings)), str(tiny_model_dir), 0, 1)
    config = _config(tmp_path / "b", adapter, **settings)
    proc = _run(config, tiny_model_dir, kill="answers:2")  # two batches of two answered, then kill -9
    assert proc.wait(timeout=300) == -9, proc.stderr.read().decode()[-3000:]
    (journal,) = (Path(config["output_dir"]) / "synthesis").glob("*/responses/responses-000000.jsonl.partial")
    answered = [row["index"] for row in read_jsonl(journal)]
    assert len(answered) == 4

    asked: list[str] = []
    answer = Responder.answer
    monkeypatch.setattr(Responder, "answer", lambda self, texts, seed: asked.extend(texts) or answer(self, texts, seed))
    resumed = synthesize(DominoConfig.model_validate(config), str(tiny_model_dir), rank=0, world_size=1)
    samples = {row["index"]: row["text"] for row in read_jsonl(journal.parent.parent / "samples" / "samples-000000.jsonl")}
    assert sorted(asked) == sorted(text for index, text in samples.items() if index not in answered)
    assert resumed.dataset.read_bytes() == reference.dataset.read_bytes()
    assert not journal.exists()


def test_a_merge_killed_while_judging_asks_the_judge_only_about_the_rest_and_gives_the_same_dataset(
    tiny_model_dir, adapter, tmp_path, monkeypatch
):
    """The judge (the tiny base model, greedy) rates 8 instructions, 2 a batch; kill -9 after its second batch.
    The rerun asks it about the 4 instructions without a journaled verdict, and the dataset, manifest counts
    included, equals an uninterrupted run's; the journal is gone. With every verdict journaled, no judge loads."""
    from axolotl_domino import filters
    from axolotl_domino.judge import LocalJudge

    settings = {
        "synthesis": {"num_samples": 8, "shard_size": 8, "keep_unfinished": True},
        "filters": {"judge": {"enabled": True, "batch_size": 2, "max_new_tokens": 4, "keep_unparsable": True}},
    }
    reference = synthesize(DominoConfig.model_validate(_config(tmp_path / "a", adapter, **settings)), str(tiny_model_dir), 0, 1)
    config = _config(tmp_path / "b", adapter, **settings)
    proc = _run(config, tiny_model_dir, kill="verdicts:2")
    assert proc.wait(timeout=300) == -9, proc.stderr.read().decode()[-3000:]
    (journal,) = (Path(config["output_dir"]) / "synthesis").glob("*/judge-*.jsonl.partial")
    assert len(read_jsonl(journal)) == 4 and not list(journal.parent.glob(MANIFEST_FILE))

    asked: list[str] = []
    call = LocalJudge.__call__
    monkeypatch.setattr(LocalJudge, "__call__", lambda self, conversations: asked.extend(
        c[0]["content"] for c in conversations) or call(self, conversations))
    resumed = synthesize(DominoConfig.model_validate(config), str(tiny_model_dir), rank=0, world_size=1)
    assert len(asked) == 4 and all("<task>" in prompt for prompt in asked)
    assert resumed.dataset.read_bytes() == reference.dataset.read_bytes()
    assert resumed.manifest["filters"] == reference.manifest["filters"]
    assert not journal.exists()

    # Every verdict journaled (a kill after the last batch): the merge runs without loading a judge.
    rerun = _config(tmp_path / "c", adapter, **settings)
    proc = _run(rerun, tiny_model_dir, kill="verdicts:4")
    assert proc.wait(timeout=300) == -9, proc.stderr.read().decode()[-3000:]
    monkeypatch.setattr(filters, "load_judge", lambda *args: pytest.fail("the judge was loaded"))
    again = synthesize(DominoConfig.model_validate(rerun), str(tiny_model_dir), rank=0, world_size=1)
    assert again.dataset.read_bytes() == reference.dataset.read_bytes()


def test_two_gloo_ranks_merge_to_the_single_rank_dataset(tiny_model_dir, adapter, tmp_path):
    settings = {"num_samples": 12, "shard_size": 2, "keep_unfinished": True}
    single = synthesize(
        DominoConfig.model_validate(_config(tmp_path / "one", adapter, synthesis=settings)), str(tiny_model_dir), 0, 1
    )
    config = _config(tmp_path / "two", adapter, synthesis=settings)
    port = _free_port()
    ranks = [_run(config, tiny_model_dir, rank, 2, port) for rank in (1, 0)]  # torch.distributed, gloo
    for proc in ranks:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-3000:]
    (manifest,) = (Path(config["output_dir"]) / "synthesis").glob(f"*/{MANIFEST_FILE}")
    merged = manifest.parent / json.loads(manifest.read_text())["dataset_file"]
    assert merged.read_bytes() == single.dataset.read_bytes()
    assert json.loads(manifest.read_text())["world_size"] == 2


def test_two_gloo_ranks_that_do_not_share_output_dir_fail_instead_of_waiting_forever(tiny_model_dir, adapter, tmp_path):
    """Each rank writes its heartbeat under its own output_dir; neither sees the other's, so both stop after
    wait_timeout_s with the cause and the fix, instead of polling forever."""
    settings = {"num_samples": 4, "shard_size": 2, "keep_unfinished": True}
    port = _free_port()
    ranks = []
    for rank in (1, 0):  # two separate folders: what node-local disks look like
        config = _config(tmp_path / f"node{rank}", adapter, synthesis=settings, wait_timeout_s=3)
        ranks.append((rank, _run(config, tiny_model_dir, rank, 2, port)))
    for rank, proc in ranks:
        assert proc.wait(timeout=300) != 0
        err = proc.stderr.read().decode()
        waited_for = "rank 0 to merge" if rank else "the other ranks' shards"
        assert "WaitTimeout: domino: waited" in err and waited_for in err, err[-3000:]
        assert "never appeared for 3 s" in err and "shared filesystem" in err, err[-3000:]


def test_disk_full_fails_cleanly_and_the_rerun_recovers(tiny_model_dir, adapter, tmp_path, monkeypatch):
    import errno

    import axolotl_domino.files as files

    settings = {"num_samples": 8, "shard_size": 2, "keep_unfinished": True}
    reference = synthesize(DominoConfig.model_validate(_config(tmp_path / "a", adapter, synthesis=settings)), str(tiny_model_dir), 0, 1)
    config = DominoConfig.model_validate(_config(tmp_path / "b", adapter, synthesis=settings))
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync_fails_on_the_third_file(fd):  # the disk fills up while the third shard is flushed
        calls["n"] += 1
        if calls["n"] == 5:  # fsyncs alternate file, directory: 5 = third file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync_fails_on_the_third_file)
    with pytest.raises(OSError, match="No space left"):
        synthesize(config, str(tiny_model_dir), 0, 1)
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    folder = tmp_path / "b" / "domino" / "synthesis"
    assert len(list(folder.glob("*/samples/samples-*.jsonl"))) == 2  # the failed shard is not under its name
    assert not list(folder.glob("**/.*.tmp-*"))  # and its temporary file is gone
    assert synthesize(config, str(tiny_model_dir), 0, 1).dataset.read_bytes() == reference.dataset.read_bytes()


def test_filters_run_at_merge_and_a_filter_change_only_re_merges(tiny_model_dir, adapter, tmp_path):
    settings = {"num_samples": 8, "shard_size": 4, "keep_unfinished": True, "temperature": 0.0}  # greedy: 8 copies
    config = _config(tmp_path, adapter, synthesis=settings)
    unfiltered = synthesize(DominoConfig.model_validate(config), str(tiny_model_dir), 0, 1)
    assert unfiltered.manifest["filters"] == [] and unfiltered.manifest["counts"]["kept"] == 8
    shards = sorted((unfiltered.dataset.parent / "samples").glob("*.jsonl"))
    mtimes = [p.stat().st_mtime_ns for p in shards]

    config["filters"] = {"dedup": {"enabled": True}, "syntax": {"enabled": True, "field": "instruction", "target": "whole_text"}}
    filtered = synthesize(DominoConfig.model_validate(config), str(tiny_model_dir), 0, 1)
    reports = {r["name"]: r for r in filtered.manifest["filters"]}
    assert set(reports) == {"syntax", "dedup"}
    counts = filtered.manifest["counts"]
    assert counts["kept"] == 8 - counts["removed_by_filters"] <= 1  # identical greedy samples: one survives at most
    assert [p.stat().st_mtime_ns for p in shards] == mtimes  # the samples were not generated again
    assert "removed by quality filters" in (filtered.dataset.parent / "README.md").read_text()
