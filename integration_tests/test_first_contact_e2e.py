"""First contact (issue 24): Axolotl's own `examples/llama-3/lora-1b.yml` with the plugin block added, run with the
real `axolotl train` on a CPU. What a new user sees first must be our one message, not a Python traceback."""

from __future__ import annotations

import subprocess

import pytest
import torch

from _axolotl import REPO, axolotl_env, write_yaml

# Axolotl's examples/llama-3/lora-1b.yml (Apache-2.0), with the model and dataset pointed at local files and the
# two blocks DOMINO needs added. Everything else is as Axolotl ships it, flash_attention: true included.
LORA_1B = {
    "base_model": None,  # the embedded SmolLM2 (the test's fixture)
    "load_in_8bit": False, "load_in_4bit": False, "strict": False,
    "plugins": ["axolotl_domino.DominoPlugin"],
    "domino": {"references": {"path": str(REPO / "data/mbpp/references_train100.jsonl")}},
    "datasets": [{"path": str(REPO / "data/mbpp/sft_train64.alpaca.jsonl"), "type": "alpaca"}],
    "dataset_prepared_path": "last_run_prepared", "val_set_size": 0.1, "output_dir": "./outputs/lora-out",
    "adapter": "lora", "lora_model_dir": None,
    "sequence_len": 2048, "sample_packing": True, "eval_sample_packing": True, "pad_to_sequence_len": True,
    "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_fan_in_fan_out": None,
    "lora_target_modules": ["gate_proj", "down_proj", "up_proj", "q_proj", "v_proj", "k_proj", "o_proj"],
    "gradient_accumulation_steps": 2, "micro_batch_size": 2, "num_epochs": 1, "optimizer": "adamw_8bit",
    "lr_scheduler": "cosine", "learning_rate": 0.0002, "train_on_inputs": False, "group_by_length": False,
    "bf16": "auto", "fp16": None, "tf32": False, "gradient_checkpointing": True, "logging_steps": 1,
    "flash_attention": True, "loss_watchdog_threshold": 5.0, "loss_watchdog_patience": 3, "warmup_steps": 10,
    "evals_per_epoch": 4, "saves_per_epoch": 1, "weight_decay": 0.0, "special_tokens": {"pad_token": "<|endoftext|>"},
}


def _train(config: dict, tmp_path) -> subprocess.CompletedProcess:
    path = write_yaml(tmp_path / "lora-1b.yml", config)
    return subprocess.run(["axolotl", "train", str(path)], cwd=tmp_path, env=axolotl_env(), capture_output=True,
                          text=True, timeout=600)


def _before(output: str, marker: str) -> str:
    assert marker in output, output[-4000:]
    return output[: output.index(marker)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash_attention is a valid choice on a GPU")
def test_axolotls_lora_1b_example_on_a_cpu_stops_with_our_message_and_no_traceback(smollm2, tmp_path):
    proc = _train({**LORA_1B, "base_model": str(smollm2)}, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    before = _before(output, "domino: error: No CUDA device is available")
    assert "Traceback" not in before and 'File "' not in before
    assert "flash_attention: true needs CUDA; remove it" in output
    assert not (tmp_path / "domino_out").exists()  # stopped before any stage


def test_a_typo_in_the_block_gets_the_key_it_meant_before_anything_runs(smollm2, tmp_path):
    config = {**LORA_1B, "base_model": str(smollm2), "flash_attention": False,
              "domino": {**LORA_1B["domino"], "induction": {"num_domian_tokens": 8}}}
    proc = _train(config, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    before = _before(output, "domino: error: the domino: block in")
    assert "Traceback" not in before
    assert "domino.induction.num_domian_tokens: unknown key; did you mean num_domain_tokens?" in output
    assert "Extra inputs are not permitted" not in output
