"""Make an Axolotl config run on a machine without CUDA, or say clearly why it cannot.

Axolotl 0.19 assumes a GPU in several defaults: `bf16: auto` turns on fp16 autocast on CPU,
the LoRA fused kernels are auto-enabled and allocate CUDA tensors, and a multi-process CPU
launch gets an integer (GPU) device map. This module fixes what has a CPU equivalent, logs
every change, and rejects what has none, before validation and before any model is loaded.

It also decides the CPU's precision (`domino.cpu_bf16`): bf16 where the CPU has bf16 matrix or dot-product
units (AMX, AVX512-BF16, Arm BF16), where it is faster, and float32 where it has none, where bf16 is slower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any

from axolotl_domino.errors import ConfigError

LOG = logging.getLogger("axolotl.integrations.domino.cpu")

LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
CUDA_ONLY_ATTENTION = ("flash_attention", "xformers_attention", "s2_attention", "flex_attention")
ATTENTION_FLAGS = CUDA_ONLY_ATTENTION + ("sdp_attention", "eager_attention", "sage_attention")


# torch.cpu.get_capabilities() names of units that compute in bf16 (x86 AMX and AVX512-BF16, Arm SVE/NEON BF16)
BF16_UNITS = ("amx_bf16", "avx512_bf16", "sve_bf16", "bf16")


def cpu_bf16_units() -> list[str]:
    """The bf16 units this CPU reports to torch (empty on a CPU without them)."""
    import torch

    capabilities = torch.cpu.get_capabilities()
    return [unit for unit in BF16_UNITS if capabilities.get(unit) is True]


def use_cpu_bf16(setting: bool | str, units: list[str] | None = None) -> bool:
    """`domino.cpu_bf16`: "auto" means bf16 exactly when the CPU has bf16 units; true and false force it.

    Also read from the raw YAML, before validation: a quoted "false" means false there too."""
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        setting = setting.lower() == "true"
    if setting == "auto":
        return bool(cpu_bf16_units() if units is None else units)
    return bool(setting)


def precision_reason(setting: bool | str, units: list[str] | None = None) -> str:
    """Why a CPU run uses the precision it does, for the log."""
    units = cpu_bf16_units() if units is None else units
    have = f"this CPU has {', '.join(units)}" if units else "this CPU has no bf16 units (bf16 would be slower)"
    if setting == "auto":
        return f"{have}; domino.cpu_bf16: auto"
    return f"domino.cpu_bf16: {str(setting).lower()} ({have})"


def cpu_trains_bf16(cfg: MutableMapping[str, Any] | dict, units: list[str] | None = None) -> bool:
    """Whether induction and SFT train under bf16 autocast on this CPU, as `apply_cpu_defaults` resolves a raw
    YAML: `bf16: true`, or `bf16` unset or auto where `domino.cpu_bf16` chooses bf16 (the planner asks too)."""
    if _unset_or_auto(cfg.get("bf16")):
        return use_cpu_bf16((cfg.get("domino") or {}).get("cpu_bf16", "auto"), units)
    return cfg.get("bf16") is True


class CpuConfigError(ConfigError):
    """A setting in the YAML that cannot work without CUDA."""


def _unset_or_auto(value: Any) -> bool:
    return value is None or value == "auto"


def apply_cpu_defaults(cfg: MutableMapping[str, Any], units: list[str] | None = None) -> list[str]:
    """Rewrite the raw (unvalidated) config in place for CPU; return the changes made.

    `units`: the CPU's bf16 units (detected when None). Raises `CpuConfigError` listing every setting that
    needs CUDA, with its fix.
    """
    errors: list[str] = []
    changes: list[str] = []

    def set_value(key: str, value: Any, why: str) -> None:
        cfg[key] = value
        changes.append(f"{key}: {value}  ({why})")

    for key in CUDA_ONLY_ATTENTION:
        if cfg.get(key):
            errors.append(f"{key}: true needs CUDA; remove it (sdpa attention is used on CPU)")
    attn = str(cfg.get("attn_implementation") or "")
    if attn.startswith("flash") or attn in ("xformers", "flex_attention"):
        errors.append(f"attn_implementation: {attn} needs CUDA; use sdpa or eager")
    if cfg.get("fp16") is True:
        errors.append("fp16: true needs CUDA (fp16 autocast/GradScaler); set fp16: false")
    for key in ("load_in_4bit", "load_in_8bit"):
        if cfg.get(key):
            errors.append(f"{key}: true needs bitsandbytes on CUDA; remove it (use adapter: lora)")
    if cfg.get("adapter") == "qlora":
        errors.append("adapter: qlora needs CUDA; use adapter: lora")
    if cfg.get("deepspeed"):
        errors.append("deepspeed: Axolotl 0.19 sets DeepSpeed up with NCCL, which needs GPUs; remove it on CPU")
    for key in LORA_KERNELS:
        if cfg.get(key) is True:
            errors.append(f"{key}: true needs CUDA; set {key}: false")
    if errors:
        raise CpuConfigError(
            "No CUDA device is available and the config asks for GPU-only features:\n  - "
            + "\n  - ".join(errors)
            + "\n(Set `domino.cpu_safe_defaults: false` to skip these checks.)"
        )

    if _unset_or_auto(cfg.get("bf16")):
        setting = (cfg.get("domino") or {}).get("cpu_bf16", "auto")
        units = cpu_bf16_units() if units is None else units  # detected once, for the choice and its log line
        if cpu_trains_bf16(cfg, units):
            set_value("bf16", True, f"bf16 autocast, float32 trainable weights and optimizer state: "
                                    f"{precision_reason(setting, units)}")
            attention_chosen = cfg.get("attn_implementation") or any(cfg.get(flag) for flag in ATTENTION_FLAGS)
            if not attention_chosen and not cfg.get("sample_packing"):
                set_value("attn_implementation", "eager", "in bf16 on a CPU, sdpa's backward is slow: an induction "
                                                          "step takes 1.3x as long as with eager (bench/README.md)")
        else:
            set_value("bf16", False, f"float32: {precision_reason(setting, units)}; "
                                     "bf16: auto would turn on fp16 autocast on CPU")
    if cfg.get("fp16") is None:
        set_value("fp16", False, "fp16 needs CUDA")
    if cfg.get("tf32"):
        set_value("tf32", False, "tf32 is a CUDA matmul mode")
    if cfg.get("adapter") == "lora":
        for key in LORA_KERNELS:
            if cfg.get(key) is None:
                set_value(key, False, "Axolotl auto-enables this CUDA kernel for LoRA")
    for change in changes:
        LOG.info("domino: no CUDA, setting %s", change)
    return changes


def cpu_device_map(cfg: MutableMapping[str, Any]) -> None:
    """Keep every rank of a multi-process CPU launch on the CPU.

    `normalize_config` gives `world_size > 1` runs an integer device index, which
    `from_pretrained` treats as an accelerator and fails on ("Cannot access accelerator device").
    """
    if (cfg.get("world_size") or 1) > 1 and str(cfg.get("device", "cpu")).startswith("cpu"):
        if cfg.get("device_map") not in (None, {"": "cpu"}):
            LOG.info("domino: no CUDA, setting device_map: {'': 'cpu'} for %s CPU ranks", cfg.get("world_size"))
            cfg["device_map"] = {"": "cpu"}


def cpu_data_parallel() -> None:
    """Make the ranks of a multi-process CPU launch one data-parallel job (DDP over gloo).

    The Trainer's `Accelerator` is built without `cpu=True`, which on a machine without CUDA means "not
    distributed": each rank of a `torchrun` launch then trained alone, on the same batches, and saved as the
    main process. accelerate reads ACCELERATE_USE_CPU (what `accelerate launch --cpu` sets) for exactly this.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("ACCELERATE_USE_CPU") is None:
        LOG.info("domino: no CUDA, %s ranks: ACCELERATE_USE_CPU=true, so that they train as one data-parallel job "
                 "(gloo)", os.environ["WORLD_SIZE"])
        os.environ["ACCELERATE_USE_CPU"] = "true"


def cuda_available() -> bool:
    """Whether a CUDA device can be used (imported lazily: `register` runs before torch is needed)."""
    import torch

    return torch.cuda.is_available()
