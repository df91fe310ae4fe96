"""`axolotl train` of an induction YAML with `deepspeed: zero3` over two CPU ranks: the D* of plain DDP, and resumable.

Real runs on SmolLM2 from the same YAML, 3 steps over 2 ranks: DDP (`axolotl train --launcher torchrun`), ZeRO-3,
which partitions the frozen model, D and S over the ranks, and ZeRO-3 resumed from its step-2 checkpoint. Measured on this CPU (2026-12-04): the logged
losses and gradient norms equal to the printed digits, D* within 7e-6 and S within 1.2e-4 (entries of about 0.5;
the two sum their gradients in different orders and Adam divides by the gradients' size).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _axolotl import REPO, axolotl_env, run_axolotl, write_yaml
from axolotl_domino.induce import SAMPLE_TOKENS_FILE
from axolotl_domino.launch import free_port

pytest.importorskip("deepspeed", reason="`make test` installs DeepSpeed (ZeRO-3 induction)")


def _config(smollm2, tmp_path, name: str, **extra) -> dict:
    references = tmp_path / "refs.jsonl"
    if not references.exists():
        lines = (REPO / "data" / "mbpp" / "references_train100.jsonl").read_text().splitlines()
        references.write_text("\n".join(lines[:8]) + "\n")
    domino = {"references": {"path": str(references)}, "output_dir": str(tmp_path / name / "domino"),
              "induction": {"num_domain_tokens": 4, "num_sample_tokens": 4, "eval_steps": 0}, "cpu_bf16": False}
    config = {
        "base_model": str(smollm2), "plugins": ["axolotl_domino.DominoPlugin"], "adapter": "domino_prompt",
        "domino": domino, "sequence_len": 128, "micro_batch_size": 2, "max_steps": 3, "learning_rate": 0.01,
        "lr_scheduler": "constant", "optimizer": "adamw_torch", "logging_steps": 1, "save_strategy": "no",
        "output_dir": str(tmp_path / name / "out"), "dataset_prepared_path": str(tmp_path / name / "prepared"),
    }
    for key, value in extra.items():
        if key == "domino":
            domino.update(value)
        else:
            config[key] = value
    return config


def initial_domain(smollm2) -> torch.Tensor:
    """D at step 0 for these settings (random init, seed 0)."""
    from transformers import AutoModelForCausalLM

    from axolotl_domino.args import InductionConfig
    from axolotl_domino.induce import initial_domain_tokens

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    return initial_domain_tokens(model, None, InductionConfig(num_domain_tokens=4, num_sample_tokens=4))


def test_zero3_induction_over_two_cpu_ranks_gives_the_ddp_d_star(smollm2, tmp_path):
    ddp = write_yaml(tmp_path / "ddp.yaml", _config(smollm2, tmp_path, "ddp"))
    ddp_log = run_axolotl("train", str(ddp), "--launcher", "torchrun", "--", "--nproc_per_node=2",
                          f"--master_port={free_port()}")
    assert "ACCELERATE_USE_CPU=true" in ddp_log.stdout + ddp_log.stderr  # the ranks are one data-parallel job

    zero3_config = _config(
        smollm2, tmp_path, "zero3", deepspeed="zero3", bf16=False, fp16=False, save_strategy="steps", save_steps=2,
        domino={"cpu_safe_defaults": False,  # they refuse DeepSpeed on a CPU, which users cannot run (see the helper)
                "induction": {"num_domain_tokens": 4, "num_sample_tokens": 4, "eval_steps": 2}})
    log = _zero3_train(write_yaml(tmp_path / "zero3.yaml", zero3_config))
    assert "ZeRO-3 partitions the frozen model, D and S over 2 ranks: this rank holds 50.0% of the" in log
    assert "domino: induction diagnostics skipped: under ZeRO-3" in log

    adapters = {name: tmp_path / name / "out" for name in ("ddp", "zero3")}
    domain = {name: load_file(str(path / "adapter_model.safetensors"))["prompt_embeddings"] for name, path in adapters.items()}
    sample = {name: load_file(str(path / SAMPLE_TOKENS_FILE))["weight"] for name, path in adapters.items()}
    assert (domain["ddp"] - initial_domain(smollm2)).abs().max() > 0.01  # the 3 steps moved D
    torch.testing.assert_close(domain["zero3"], domain["ddp"], atol=1e-4, rtol=0)
    torch.testing.assert_close(sample["zero3"], sample["ddp"], atol=1e-3, rtol=0)

    # Resumed from the ZeRO-3 checkpoint of step 2 (DeepSpeed's partitioned states, S and the RNGs beside them):
    # the same D* and S, bit for bit.
    resumed = tmp_path / "resumed" / "out"
    shutil.copytree(adapters["zero3"] / "checkpoint-2", resumed / "checkpoint-2")
    _zero3_train(write_yaml(tmp_path / "resumed.yaml", {
        **zero3_config, "output_dir": str(resumed), "resume_from_checkpoint": str(resumed / "checkpoint-2"),
        "domino": {**zero3_config["domino"], "output_dir": str(tmp_path / "resumed" / "domino")}}))
    assert torch.equal(load_file(str(resumed / "adapter_model.safetensors"))["prompt_embeddings"], domain["zero3"])
    assert torch.equal(load_file(str(resumed / SAMPLE_TOKENS_FILE))["weight"], sample["zero3"])


def _zero3_train(config: Path) -> str:
    """`axolotl.cli.train CONFIG` over two CPU ranks through the helper that lets accelerate run DeepSpeed on CPUs."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(REPO / "integration_tests" / "cpu_deepspeed_train.py"), str(config)]
    proc = subprocess.run(command, cwd=REPO, env=axolotl_env(), capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log
