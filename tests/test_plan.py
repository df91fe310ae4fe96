"""`axolotl domino plan`: the check and the estimates before a long run, without loading weights or writing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from axolotl_domino.args import DominoConfig
from axolotl_domino.cli import domino
from axolotl_domino.estimate import (
    ALLGATHER_BYTES_PER_S, CHILD_START_S, DECODE_BANDWIDTH_EFFICIENCY, TRAIN_EFFICIENCY, UNFINISHED_SHARE, ZERO3_LIVE_LAYERS,
    ModelShape, NominalSpeeds, RunFacts, estimate, generation_seconds, model_shape,
)

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


def test_nominal_hardware_prices_training_by_flops_and_decoding_by_bytes():
    shape = ModelShape(params=10**9, layers=10, hidden=1000, vocab=1000, kv_dim=100)
    speeds = NominalSpeeds(shape, tflops=1.0, bandwidth_gbs=100.0)
    domino = DominoConfig.model_validate({
        "references": {"path": str(REPO / "data/mbpp/references_train100.jsonl")},
        "induction": {"num_domain_tokens": 8, "num_sample_tokens": 8, "micro_batch_size": 2, "num_epochs": 1,
                      "eval_steps": 0},
        "synthesis": {"num_samples": 100, "max_new_tokens": 50, "batch_size": 100},
        "score": {"enabled": False},
    })
    stages = {s.stage: s for s in estimate(domino, {}, shape, RunFacts([10, 10, 10, 10]), speeds)}
    # 2 steps of 8 (D) + 2 x 10 (L1) + 2 x 8 (S) + 2 anchors x 2 candidates x 10 (L2) = 84 tokens, 4N FLOPs each
    assert stages["induction"].seconds == pytest.approx(2 * 84 * 4e9 / (1e12 * TRAIN_EFFICIENCY) + CHILD_START_S["cuda"])
    # One batch of 100: 50 steps that each read the weights (2 GB) and the cache, at the static loop's share of
    # 100 GB/s (a GPU decodes on the static loop).
    step = lambda batch, context: (2e9 + batch * context * 10 * 2 * 100 * 2) / (100e9 * DECODE_BANDWIDTH_EFFICIENCY["hf-static"])
    assert speeds.decode_step(100, 8, 1.0, "hf-static") == pytest.approx(step(100, 8))
    assert speeds.decode_step(100, 8, 1.0, "hf") == pytest.approx(step(100, 8) * 0.5 / 0.13)  # the dynamic loop
    # Samples are as long as the references (10 tokens), UNFINISHED_SHARE of them cut at 50: a batch of 100 has one
    # with probability p, and runs 50 steps then, else 10 (16: its ends are read every 16 steps), every row in every
    # step (the static loop), at a mean context of 8 + steps / 2 positions.
    p = 1 - (1 - UNFINISHED_SHARE) ** 100
    steps = min(50, 16 * math.ceil((p * 50 + (1 - p) * 10) / 16))
    assert stages["synthesis"].seconds == pytest.approx(steps * step(100, 8 + steps / 2) + CHILD_START_S["cuda"])
    assert "responses" not in stages and "sft" not in stages and "scorecard" not in stages


def test_zero3_induction_holds_a_shard_of_the_weights_and_pays_for_gathering_them():
    shape = ModelShape(params=10**9, layers=10, hidden=1000, vocab=1000, kv_dim=100)
    speeds = NominalSpeeds(shape, tflops=1.0, bandwidth_gbs=100.0)

    def induction(deepspeed: str | None, world: int):
        domino = DominoConfig.model_validate({
            "references": {"path": str(REPO / "data/mbpp/references_train100.jsonl")},
            "induction": {"num_domain_tokens": 8, "num_sample_tokens": 8, "micro_batch_size": 2, "max_steps": 2,
                          "eval_steps": 1, "axolotl": {"deepspeed": deepspeed} if deepspeed else {}},
        })
        return estimate(domino, {}, shape, RunFacts([10] * 8), speeds, world_size=world, only={"induction"})[0]

    ddp, zero3 = induction("zero2", 8), induction("zero3", 8)
    weights = 2e9  # bf16
    rows = 8 + 8 * 8  # D's k and S's n x l soft tokens of 1000 values: float32 parameter, gradient, two moments
    assert ddp.peak_bytes - zero3.peak_bytes == pytest.approx(
        weights - (weights / 8 + ZERO3_LIVE_LAYERS * weights / 10)  # a shard and the layers being gathered
        + rows * 1000 * 16 * 7 / 8 - rows * 1000 * 2 * 2, abs=2)  # a shard of D and S's state; them whole in bf16
    # Four passes of the model (L1 and L2), forward and backward, each gathering the 7/8 of the weights held elsewhere;
    # no evals: the diagnostics do not run under ZeRO-3.
    gather = 8 * weights * 7 / 8 / ALLGATHER_BYTES_PER_S
    train = 2 * 84 * 4e9 / (1e12 * TRAIN_EFFICIENCY)
    assert zero3.seconds == pytest.approx(train + 2 * gather + CHILD_START_S["cuda"])
    assert "ZeRO-3 over 8" in zero3.basis and "0 evals" in zero3.basis and "2 evals" in ddp.basis


class _LinearDecode:
    """A decode step of known cost: fixed + batch x (row + context x per_context)."""

    device = "cpu"

    def decode_step(self, batch, context, temperature, backend="hf"):
        return 0.5 + batch * (0.01 + context * 0.001)

    def forward(self, rows, length, every_position=False):
        return rows * length * 1e-4


def test_a_batch_costs_its_longest_rows_steps_and_each_rows_own_tokens():
    # Rows of 4 or 12 tokens, batches of 10: almost every batch has a row of 12, so it runs 12 steps.
    dynamic = generation_seconds(_LinearDecode(), rows=20, batch=10, context=30, cap=100, lengths=[4, 12],
                                 temperature=1.0, prompt=30)
    steps = 12 * (1 - 0.5**10) + 4 * 0.5**10
    rows = 20 * 8 * (0.01 + 0.001 * (30 + 8 / 2))  # each row's tokens (8 on average) at its average context
    assert dynamic == pytest.approx(2 * steps * 0.5 + rows + 2 * 10 * 30 * 1e-4, rel=0.01)
    static = generation_seconds(_LinearDecode(), rows=20, batch=10, context=30, cap=100, lengths=[4, 12],
                                temperature=1.0, backend="hf-static")
    assert static == pytest.approx(2 * 16 * (0.5 + 10 * (0.01 + 0.001 * (30 + 8))))  # 16 steps: ends read every 16


def test_the_probe_extrapolates_a_slice_to_the_whole_model_in_layers(monkeypatch):
    """A run of the slice that costs 0.2 s + 0.1 s a layer (on a fake clock) is priced 0.2 + 30 x 0.1 s."""
    from transformers import LlamaConfig

    from axolotl_domino import probe

    clock = [0.0]
    monkeypatch.setattr(probe.time, "perf_counter", lambda: clock[0])
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=30,
                         num_attention_heads=2, num_key_value_heads=1)
    slice_ = probe.Probe(config, torch.device("cpu"), torch.float32)
    assert len(slice_.model.get_decoder().layers) == probe.PROBE_LAYERS and slice_.layers == 30

    def prepare(model):
        layers = len(model.get_decoder().layers)
        assert model.config.num_hidden_layers == layers
        return lambda: clock.__setitem__(0, clock[0] + 0.2 + 0.1 * layers)

    assert slice_._time(prepare) == pytest.approx(0.2 + 30 * 0.1)
    assert len(slice_.model.get_decoder().layers) == probe.PROBE_LAYERS  # restored


def test_the_probe_times_the_stages_real_code_on_a_tiny_model(tiny_model_dir):
    from axolotl_domino import probe
    from axolotl_domino.estimate import model_config

    slice_ = probe.Probe(model_config(str(tiny_model_dir)), torch.device("cpu"), torch.float32)
    times = [slice_.induction_step(2, 2, 2, 0, 5, True), slice_.induction_step(2, 2, 2, 4, 5, True),
             slice_.decode_step(4, 8, 1.0), slice_.forward(4, 8), slice_.forward(4, 8, every_position=True),
             slice_.sft_step(2, 8, probe.LoraSpec(dropout=0.05), checkpointing=False),
             slice_.sft_step(2, 8, None, checkpointing=True)]
    assert all(t > 0 for t in times)


@pytest.mark.parametrize("raw", [{}, {"bf16": True}, {"bf16": False}, {"bf16": "auto"}, {"domino": {"cpu_bf16": False}},
                                 {"domino": {"cpu_bf16": True}, "bf16": False}])
@pytest.mark.parametrize("units", [[], ["avx512_bf16"]])
def test_the_plan_prices_a_cpu_in_the_precision_the_run_resolves(raw, units, monkeypatch):
    """The planner's precision is `apply_cpu_defaults`'s: bf16 training exactly when the resolved YAML says
    bf16, bf16 inference weights exactly when `domino.cpu_bf16` resolves to bf16."""
    from axolotl_domino import cpu, estimate as planner

    monkeypatch.setattr(planner, "cpu_bf16_units", lambda: units)
    precision = planner.Precision.of(raw, "cpu")
    resolved = {**raw, "domino": raw.get("domino", {})}
    cpu.apply_cpu_defaults(resolved, units)
    assert precision.train_bf16 == (resolved["bf16"] is True)
    assert precision.infer_bf16 == cpu.use_cpu_bf16(raw.get("domino", {}).get("cpu_bf16", "auto"), units)


def test_the_parameter_count_comes_from_the_config_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from axolotl_domino.estimate import model_config

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert model_shape(model_config(str(tiny_model_dir))).params == real
    assert torch.empty(0).device.type == "cpu"  # the meta device did not leak out as the default
