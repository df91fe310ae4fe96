"""`axolotl domino plan`: the check and the estimates before a long run, without loading weights or writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from axolotl_domino.args import DominoConfig
from axolotl_domino.cli import domino
from axolotl_domino.estimate import Hardware, ModelShape, estimate, model_shape

REPO = Path(__file__).resolve().parents[1]


def _rows(output: str) -> dict[str, list[str]]:
    """The plan table's cells by stage name (columns are separated by two or more spaces)."""
    import re

    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in output.splitlines()) if cells
            and cells[0] in ("induction", "synthesis", "responses", "filters", "scorecard", "sft", "total")}


def test_the_paper_scale_yaml_plans_on_a_cpu_node_offline_without_writing(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(domino, ["plan", "example_yamls/paper_scale.yaml", "--tflops", "400", "--world-size", "8"])
    assert result.exit_code == 0, result.output
    assert "Qwen/Qwen2.5-Coder-7B-Instruct: 7615.6M parameters, 28 layers" in result.output
    rows = _rows(result.output)
    assert set(rows) == {"induction", "synthesis", "responses", "filters", "scorecard", "sft", "total"}
    assert rows["induction"][1] == "run" and "ZeRO-3 over 8" in rows["sft"][-1]
    assert not Path("/shared/domino").exists()  # the cluster's output_dir was not created


def test_a_fresh_run_plans_every_stage_and_writes_nothing(tiny_model_dir, tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"text": "write a function"}\n{"text": "find the sum of a list"}\n')
    config = tmp_path / "run.yaml"
    out = tmp_path / "domino"
    config.write_text(yaml.safe_dump({
        "base_model": str(tiny_model_dir), "plugins": ["axolotl_domino.DominoPlugin"],
        "domino": {"references": {"path": str(refs), "max_tokens": 32}, "output_dir": str(out),
                   "induction": {"num_domain_tokens": 4, "num_sample_tokens": 4, "micro_batch_size": 2}},
        "micro_batch_size": 1, "num_epochs": 1, "learning_rate": 1e-4, "sequence_len": 64, "output_dir": str(tmp_path / "o"),
    }))
    result = CliRunner().invoke(domino, ["plan", str(config)])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert rows["induction"][1] == "run" and rows["synthesis"][1] == "run, on the new D*"
    assert rows["sft"][1] == "run (Axolotl)"
    assert not out.exists()


def test_estimates_follow_the_stated_formulas():
    shape = ModelShape(params=10**9, layers=10, hidden=1000, vocab=1000, kv_dim=100)
    hw = Hardware("cuda", 1e12, 2, "test")
    domino = DominoConfig.model_validate({
        "references": {"path": str(REPO / "data/mbpp/references_train100.jsonl")},
        "induction": {"num_domain_tokens": 8, "num_sample_tokens": 8, "micro_batch_size": 2, "num_epochs": 1,
                      "eval_steps": 0},
        "synthesis": {"num_samples": 100, "max_new_tokens": 50},
        "score": {"enabled": False},
    })
    stages = {s.stage: s for s in estimate(domino, {}, shape, [9, 11, 10, 10], hw)}
    from axolotl_domino.estimate import EFFICIENCY, START_UP_S, TRAIN_EFFICIENCY

    # 2 steps of 2 x (8 + 8) prefix tokens + 2 x 2 candidates x 10 tokens = 72 tokens, 4N FLOPs each
    assert stages["induction"].seconds == pytest.approx(2 * 72 * 4e9 / (1e12 * TRAIN_EFFICIENCY) + START_UP_S["cuda"])
    # 100 samples x (8 + 50) tokens x 2N
    assert stages["synthesis"].seconds == pytest.approx(100 * 58 * 2e9 / (1e12 * EFFICIENCY) + START_UP_S["cuda"])
    assert "responses" not in stages and "sft" not in stages and "scorecard" not in stages


def test_the_parameter_count_comes_from_the_config_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert model_shape(str(tiny_model_dir)).params == real
    assert torch.empty(0).device.type == "cpu"  # the meta device did not leak out as the default
