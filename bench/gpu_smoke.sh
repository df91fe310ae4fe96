#!/usr/bin/env bash
# GPU smoke suite (bench/gpu_smoke.py): one command on a machine with NVIDIA GPUs, from a fresh clone.
#   bash bench/gpu_smoke.sh [--only CHECK ...]
# Installs what it needs: .venv as `make install` builds it (torch 2.13.0: pip takes the CUDA build on a
# GPU machine), then the deepspeed and vllm extras (vLLM 0.28-0.33 pins torch 2.13.0/2.14.0 exactly), then the
# embedded model. flash-attn is tried as a prebuilt wheel only (PyPI has none: it builds from source for
# a long time), so its check is SKIP unless it is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
make install
.venv/bin/pip install --quiet -e ".[test,deepspeed,vllm]"
.venv/bin/pip install --quiet --only-binary :all: "flash-attn==2.8.3" 2>/dev/null || echo "flash-attn: no prebuilt wheel; its check will be skipped"
make model
exec .venv/bin/python bench/gpu_smoke.py "$@"
