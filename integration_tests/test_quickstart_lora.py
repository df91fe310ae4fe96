"""The quickstart YAML (LoRA SFT through the plugin) trains on CPU with the plugin's CPU defaults."""

from __future__ import annotations

import json

import yaml
from safetensors.torch import load_file

from _axolotl import REPO, run_axolotl, write_yaml


def test_quickstart_lora_trains_and_saves_adapter(smollm2, tmp_path):
    config = yaml.safe_load((REPO / "example_yamls" / "quickstart.yaml").read_text())
    config.update(
        base_model=str(smollm2),
        max_steps=3,
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"),
    )
    proc = run_axolotl("train", str(write_yaml(tmp_path / "quickstart.yaml", config)))
    log = proc.stdout + proc.stderr

    # The plugin made the run CPU-safe and said so.
    assert "domino: no CUDA, setting bf16: False" in log
    assert "domino: no CUDA, setting lora_mlp_kernel: False" in log

    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 16
    weights = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert len(lora_b) == 30 * 7  # every linear layer of the 30 blocks
    # lora_B starts at zero: non-zero means the optimizer really stepped.
    assert sum(float(t.abs().sum()) for t in lora_b) > 0
