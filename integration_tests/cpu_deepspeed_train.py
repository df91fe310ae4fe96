"""`python -m axolotl.cli.train CONFIG` with DeepSpeed on CPU ranks, for tests only (one process per torchrun rank).

accelerate picks no backend for a DeepSpeed launch on a machine without CUDA, so it counts each rank as a world of
one while DeepSpeed's own group (gloo, its CPU accelerator's choice) counts them all, and DeepSpeed stops on the
batch-size mismatch. This picks gloo for accelerate too; nothing else is changed. Users run DeepSpeed on GPUs,
where accelerate picks NCCL by itself, and the plugin refuses DeepSpeed on a CPU (`cpu.apply_cpu_defaults`).
"""

from __future__ import annotations

import os
import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType

_choose_backend = accelerate.state.PartialState._prepare_backend


def _gloo_for_cpu_ranks(self, cpu=False, sagemaker_dp=False, backend=None):
    backend, kind = _choose_backend(self, cpu, sagemaker_dp, backend)
    if backend is None and int(os.environ.get("LOCAL_RANK", -1)) != -1:
        return "gloo", DistributedType.MULTI_CPU
    return backend, kind


accelerate.state.PartialState._prepare_backend = _gloo_for_cpu_ranks
sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
runpy.run_module("axolotl.cli.train", run_name="__main__", alter_sys=True)
