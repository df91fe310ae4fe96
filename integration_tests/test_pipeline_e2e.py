"""The one-YAML pipeline (quickstart.yaml, scaled down) through the real `axolotl` CLI on SmolLM2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from _axolotl import REPO, run_axolotl, write_yaml


def _config(smollm2: Path, tmp_path: Path, references: Path, **domino_overrides) -> dict:
    config = yaml.safe_load((REPO / "example_yamls" / "quickstart.yaml").read_text())
    domino = config["domino"]
    domino["output_dir"] = str(tmp_path / "domino")
    domino["references"]["path"] = str(references)
    domino["induction"].update(num_domain_tokens=4, num_sample_tokens=4, num_epochs=2, micro_batch_size=4)
    # A 2-epoch D* rarely stops within 48 tokens: keep cut samples so the test does not hinge on it.
    domino["synthesis"].update(num_samples=8, max_new_tokens=48, batch_size=8, keep_unfinished=True)
    domino["responses"].update(max_new_tokens=256, batch_size=8, keep_unfinished=True)  # likewise for answers
    domino["filters"] = {"dedup": {"enabled": True}}  # the quickstart's stricter filters could empty 8 samples
    for key, value in domino_overrides.items():
        domino[key] = {**domino.get(key, {}), **value}
    config.update(
        base_model=str(smollm2),
        max_steps=2,
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"),
    )
    return config


def _references(tmp_path: Path, count: int = 8) -> Path:
    path = tmp_path / "refs.jsonl"
    lines = (REPO / "data" / "mbpp" / "references_train100.jsonl").read_text().splitlines()[:count]
    path.write_text("\n".join(lines) + "\n")
    return path


def _output(proc) -> str:
    return proc.stdout + proc.stderr


def _manifest(domino_dir: Path) -> dict:
    (path,) = (domino_dir / "synthesis").glob("*/manifest.json")
    return json.loads(path.read_text())


def test_pipeline_end_to_end_then_skips_then_reruns_on_a_changed_reference(smollm2, tmp_path):
    references = _references(tmp_path)
    config = _config(smollm2, tmp_path, references)
    config["domino"]["cpu_bf16"] = True  # the bf16 path on every CPU, with or without bf16 units
    config_path = write_yaml(tmp_path / "domino.yaml", config)
    log = _output(run_axolotl("train", str(config_path)))
    domino_dir = tmp_path / "domino"

    if not torch.cuda.is_available():  # on a GPU machine the CPU-safe defaults rightly stay out of the way
        assert "domino: no CUDA, setting bf16: True" in log and "domino.cpu_bf16: true" in log
        # The induction ran under Axolotl's bf16 (keyed), the local models sampled and answered in bf16.
        (induce_yaml,) = (domino_dir / "induction").glob("induce-*.yaml")
        assert yaml.safe_load(induce_yaml.read_text())["bf16"] is True
        assert _manifest(domino_dir)["local_model_dtype"] == "bfloat16"
        if len(os.sched_getaffinity(0)) > 1:  # SFT on the node's cores, not accelerate's one thread
            assert f"this process trains on {len(os.sched_getaffinity(0))} threads" in log
        # One CPU process: synthesis ran in it, its log still in the stage's log file.
        assert "domino: synthesis runs in this process" in log
        assert "domino: wrote" in (domino_dir / "synthesis" / "synthesize-rank0.log").read_text()
    assert "domino: inducing the domain" in log
    adapter = domino_dir / "induction" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["num_virtual_tokens"] == 4
    manifest = _manifest(domino_dir)
    assert manifest["counts"]["generated"] == 8 and manifest["counts"]["kept"] >= 1
    dataset = next((domino_dir / "synthesis").glob("*/synthetic-*.chat_template.jsonl"))
    rows = [json.loads(line) for line in dataset.read_bytes().splitlines()]
    assert len(rows) == manifest["counts"]["kept"]
    assert all([m["role"] for m in row["messages"]] == ["user", "assistant"] for row in rows)
    assert f"domino: fine-tuning on {dataset}" in log
    assert [r["name"] for r in manifest["filters"]] == ["dedup"]
    assert json.loads((dataset.parent / "scorecard.json").read_text())["counts"]
    sft = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert sum(float(t.abs().sum()) for name, t in sft.items() if "lora_B" in name) > 0  # SFT stepped

    # `report` resolves the YAML as `axolotl train` does, so it sees the finished stages as current.
    report = run_axolotl("domino", "report", str(config_path)).stdout
    assert "induction: up to date" in report and f"-> {dataset}" in report
    # The induction's diagnostics ran once, at its last step (eval_steps 50 > 4 steps), and report shows them.
    assert "induction diagnostics (1 evals" in report and "near_copy_share" in report

    # Nothing changed: both stages are skipped (`preprocess` runs the stages without SFT).
    log = _output(run_axolotl("preprocess", str(config_path)))
    assert "domino: induction up to date" in log and "domino: synthesis up to date" in log
    assert "domino: inducing the domain" not in log

    # One reference changed: induction and synthesis run again, into a new dataset file.
    lines = references.read_text().splitlines()
    lines[3] = json.dumps({"text": "Write a function to count the vowels in a string."})
    references.write_text("\n".join(lines) + "\n")
    # One sample: Axolotl's own preprocess label check crashes on a one-row dataset (randrange(0, 0)).
    config["domino"]["synthesis"]["num_samples"] = 1
    write_yaml(config_path, config)
    log = _output(run_axolotl("preprocess", str(config_path)))
    assert "domino: inducing the domain" in log and "domino: synthesis up to date" not in log
    datasets = sorted((domino_dir / "synthesis").glob("*/synthetic-*.jsonl"))
    assert len(datasets) == 2
    assert sorted(len(path.read_bytes().splitlines()) for path in datasets)[0] == 1
    assert list((tmp_path / "prepared").glob("*/data-*.arrow"))  # the one row was tokenised and cached


def test_pipeline_with_two_torchrun_ranks(smollm2, tmp_path):
    config = _config(
        smollm2, tmp_path, _references(tmp_path),
        responses={"enabled": False}, dataset={"format": "completion"},
        synthesis={"shard_size": 2}, score={"enabled": False},
    )
    config["micro_batch_size"] = 2
    config_path = write_yaml(tmp_path / "domino.yaml", config)
    proc = run_axolotl("train", str(config_path), "--launcher", "torchrun", "--", "--nproc_per_node", "2")
    log = _output(proc)
    domino_dir = tmp_path / "domino"
    manifest = _manifest(domino_dir)
    assert manifest["world_size"] == 2 and manifest["counts"]["generated"] == 8
    assert len(list((domino_dir / "synthesis").glob("*/samples/samples-*.jsonl"))) == 4
    assert "domino: sampling from D* (rank 1)" in (domino_dir / "synthesis" / "synthesize-rank1.log").read_text()
    assert "--nproc_per_node=2" in log  # induction ran over both ranks,
    assert "2 ranks: ACCELERATE_USE_CPU=true, so that they train as one data-parallel job" in log  # as one DDP job
    history = json.loads((domino_dir / "induction" / "adapter" / "induction_report.json").read_text())["history"]
    assert [e["step"] for e in history] == [2]  # rank 0 alone ran the diagnostics, once, at the last step
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
