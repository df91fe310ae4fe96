"""CPU defaults: safe values are set and logged, GPU-only settings are clear errors."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from axolotl_domino import cpu
from axolotl_domino.cpu import CpuConfigError, apply_cpu_defaults, cpu_data_parallel, cpu_device_map, use_cpu_bf16


def test_sets_safe_values_and_logs_each(caplog):
    cfg = {"adapter": "lora", "bf16": "auto", "tf32": True, "lora_o_kernel": False}
    with caplog.at_level(logging.INFO, logger="axolotl.integrations.domino.cpu"):
        changes = apply_cpu_defaults(cfg, units=[])
    assert cfg["bf16"] is False and cfg["fp16"] is False and cfg["tf32"] is False
    assert cfg["lora_mlp_kernel"] is False and cfg["lora_qkv_kernel"] is False
    assert cfg["lora_embedding_kernel"] is False and cfg["lora_o_kernel"] is False
    assert len(changes) == 6  # lora_o_kernel was already false: left alone, not logged
    assert len([r for r in caplog.records if "no CUDA, setting" in r.message]) == 6


def test_explicit_choices_that_work_on_cpu_are_kept():
    for units in ([], ["avx512_bf16"]):
        for bf16 in (True, False):
            cfg = {"bf16": bf16, "fp16": False}
            assert apply_cpu_defaults(cfg, units) == []
            assert cfg == {"bf16": bf16, "fp16": False}


@pytest.mark.parametrize("units,setting,expected", [
    ([], "auto", False),                  # no bf16 units: float32, where bf16 would be slower
    (["avx512_bf16"], "auto", True),
    (["amx_bf16", "avx512_bf16"], "auto", True),
    (["avx512_bf16"], False, False),      # the key turns it off
    ([], True, True),                     # and forces it (tests, or a user who measured)
])
def test_bf16_follows_the_cpu_units_unless_the_key_says_otherwise(units, setting, expected, caplog):
    cfg = {"bf16": "auto", "domino": {"cpu_bf16": setting}}
    with caplog.at_level(logging.INFO, logger="axolotl.integrations.domino.cpu"):
        apply_cpu_defaults(cfg, units)
    assert cfg["bf16"] is expected and use_cpu_bf16(setting, units) is expected
    [line] = [r.message for r in caplog.records if "setting bf16" in r.message]
    assert ("no bf16 units" in line) == (not units) and f"cpu_bf16: {str(setting).lower()}" in line


def test_bf16_on_cpu_takes_eager_attention_unless_attention_or_packing_is_set():
    cfg = {"bf16": "auto"}
    apply_cpu_defaults(cfg, ["avx512_bf16"])
    assert cfg["attn_implementation"] == "eager"
    for kept in ({"attn_implementation": "sdpa"}, {"sdp_attention": True}, {"sample_packing": True}):
        cfg = {"bf16": "auto", **kept}
        apply_cpu_defaults(cfg, ["avx512_bf16"])
        assert cfg.get("attn_implementation") == kept.get("attn_implementation")
    float32 = {"bf16": "auto"}
    apply_cpu_defaults(float32, [])
    assert "attn_implementation" not in float32  # float32: sdpa and eager take the same time


def test_quoted_booleans_in_the_raw_yaml_mean_what_they_say():
    assert use_cpu_bf16("false", ["avx512_bf16"]) is False and use_cpu_bf16("True", []) is True


def test_detection_reads_torchs_cpu_capabilities(monkeypatch):
    reported = {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: reported)
    assert cpu.cpu_bf16_units() == [] and use_cpu_bf16("auto") is False
    reported["avx512_bf16"] = True
    assert cpu.cpu_bf16_units() == ["avx512_bf16"] and use_cpu_bf16("auto") is True


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


def test_several_cpu_ranks_are_told_to_accelerate_as_one_cpu_job(monkeypatch):
    """accelerate (AcceleratorState) builds a MULTI_CPU state, DDP over gloo, only when ACCELERATE_USE_CPU says the job
    is on CPUs; what that gives is checked end to end in integration_tests/test_zero3_e2e.py (the DDP run)."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "")  # recorded, so the variable is restored (unset) afterwards
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setenv("WORLD_SIZE", "1")
    cpu_data_parallel()
    assert "ACCELERATE_USE_CPU" not in os.environ  # one process: nothing to join
    monkeypatch.setenv("WORLD_SIZE", "2")
    cpu_data_parallel()
    assert os.environ["ACCELERATE_USE_CPU"] == "true"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")  # the user's own choice stands
    cpu_data_parallel()
    assert os.environ["ACCELERATE_USE_CPU"] == "false"
