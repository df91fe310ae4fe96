"""Induction under DeepSpeed ZeRO-3 over two gloo ranks on the CPU: the same D* and S as the unsharded steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from axolotl_domino.induce import SAMPLE_TOKENS_FILE
from axolotl_domino.launch import free_port

pytest.importorskip("deepspeed", reason="`make test` installs DeepSpeed (ZeRO-3 induction)")
sys.path.insert(0, str(Path(__file__).parent))
import zero3_worker as worker  # noqa: E402

WORLD = 2


def unsharded() -> tuple[worker.DominoPromptModel, list[float]]:
    """The same steps in one process: each rank's loss backpropagated in turn, gradients averaged, one AdamW step."""
    prompt = worker.prompt_model(worker.base_model())
    trainable = [p for p in prompt.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=worker.LEARNING_RATE, weight_decay=0.0)
    rank0_losses = []
    for step in range(worker.STEPS):
        optimizer.zero_grad()
        for rank in range(WORLD):
            loss = prompt(**worker.micro_batch(step, rank, WORLD)).loss
            (loss / WORLD).backward()
            if rank == 0:
                rank0_losses.append(loss.item())
        optimizer.step()
    return prompt, rank0_losses


def test_zero3_induction_over_two_ranks_matches_the_unsharded_steps(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", f"--master_port={free_port()}",
               str(Path(worker.__file__)), str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["world"] == WORLD and run["base_partitioned"] and run["domain_partitioned"]  # really sharded
    assert run["saved"] == ["domino_sample.weight", "prompt_encoder.default.embedding.weight"]  # no frozen weights

    reference, losses = unsharded()
    assert run["losses"] == pytest.approx(losses, abs=1e-5)
    domain = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))["prompt_embeddings"]
    sample = load_file(str(tmp_path / "adapter" / SAMPLE_TOKENS_FILE))["weight"]
    start = worker.prompt_model(worker.base_model()).domain_tokens.detach()
    assert (reference.domain_tokens.detach() - start).abs().max() > 0.1  # the steps moved D
    torch.testing.assert_close(domain, reference.domain_tokens.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(sample, reference.domino_sample.weight.detach(), atol=1e-5, rtol=0)
