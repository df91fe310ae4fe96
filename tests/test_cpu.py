"""CPU defaults: safe values are set and logged, GPU-only settings are clear errors."""

from __future__ import annotations

import logging

import pytest

from axolotl_domino.cpu import CpuConfigError, apply_cpu_defaults, cpu_device_map


def test_sets_safe_values_and_logs_each(caplog):
    cfg = {"adapter": "lora", "bf16": "auto", "tf32": True, "lora_o_kernel": False}
    with caplog.at_level(logging.INFO, logger="axolotl.integrations.domino.cpu"):
        changes = apply_cpu_defaults(cfg)
    assert cfg["bf16"] is False and cfg["fp16"] is False and cfg["tf32"] is False
    assert cfg["lora_mlp_kernel"] is False and cfg["lora_qkv_kernel"] is False
    assert cfg["lora_embedding_kernel"] is False and cfg["lora_o_kernel"] is False
    assert len(changes) == 6  # lora_o_kernel was already false: left alone, not logged
    assert len([r for r in caplog.records if "no CUDA, setting" in r.message]) == 6


def test_explicit_choices_that_work_on_cpu_are_kept():
    cfg = {"bf16": True, "fp16": False}
    assert apply_cpu_defaults(cfg) == []
    assert cfg == {"bf16": True, "fp16": False}


@pytest.mark.parametrize(
    "key,value",
    [
        ("flash_attention", True),
        ("attn_implementation", "flash_attention_2"),
        ("fp16", True),
        ("load_in_4bit", True),
        ("adapter", "qlora"),
        ("deepspeed", "zero2.json"),
        ("lora_mlp_kernel", True),
    ],
)
def test_gpu_only_settings_are_errors_naming_the_key(key, value):
    with pytest.raises(CpuConfigError, match=key):
        apply_cpu_defaults({key: value})


def test_all_errors_reported_at_once():
    with pytest.raises(CpuConfigError) as info:
        apply_cpu_defaults({"flash_attention": True, "fp16": True})
    assert "flash_attention" in str(info.value) and "fp16" in str(info.value)


def test_multi_process_cpu_device_map():
    cfg = {"world_size": 2, "device": "cpu", "device_map": {"": 1}}
    cpu_device_map(cfg)
    assert cfg["device_map"] == {"": "cpu"}
    single = {"world_size": 1, "device": "cpu", "device_map": "auto"}
    cpu_device_map(single)
    assert single["device_map"] == "auto"
