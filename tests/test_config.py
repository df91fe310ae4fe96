"""The `domino:` block validates through Axolotl's own config validation, naming the key on error.

The plugin checks the block first, in `register`, so a bad block is our message (`ConfigError`, shown as
`domino: error: ...`); these tests run with DOMINO_DEBUG=1 to get the error itself."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from unittest import mock

import pytest

from axolotl_domino.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
REFS = str(REPO / "data/mbpp/references_train100.jsonl")
BASE = {
    "base_model": "models/smollm2-135m-instruct",
    "plugins": ["axolotl_domino.DominoPlugin"],
    "datasets": [{"path": str(REPO / "data/mbpp/sft_train64.alpaca.jsonl"), "type": "alpaca"}],
    "learning_rate": 1e-4,
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "num_epochs": 1,
    "sequence_len": 128,
    "output_dir": "/tmp/unused",
    "domino": {"references": {"path": REFS}},
}


@pytest.fixture(scope="module")
def validate():
    """Axolotl's validate_config with the plugin registered, run from the repo root."""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    def run(overrides: dict):
        cfg = DictDefault(copy.deepcopy({**BASE, **overrides}))
        with mock.patch.dict(os.environ, {"DOMINO_DEBUG": "1"}):
            prepare_plugins(cfg)
        return validate_config(cfg)

    return run


def test_valid_block_loads_with_defaults(validate):
    cfg = validate({})
    assert cfg.domino.references.path == REFS
    assert cfg.domino.references.field == "text"
    assert cfg.domino.induction.num_domain_tokens == 256
    assert cfg.domino.induction.contrastive_weight == 1.0
    assert cfg.domino.output_dir == "domino_out"


def test_no_domino_block_is_a_no_op(validate):
    cfg = validate({"domino": None})
    assert not cfg.get("domino")


@pytest.mark.parametrize(
    "block,key",
    [
        ({"references": {"path": "missing.jsonl"}}, "domino.references"),
        ({"references": {"path": REFS, "max_tokens": 0}}, "domino.references.max_tokens"),
        ({"references": {"path": REFS, "format": "xml"}}, "domino.references.format"),
        ({"references": {"path": REFS}, "induction": {"num_domain_tokens": -1}}, "domino.induction.num_domain_tokens"),
        ({"references": {"path": REFS}, "induction": {"num_sample_tokens": -3}}, "domino.induction.num_sample_tokens"),
        ({"references": {"path": REFS}, "induction": {"contrastive_weight": -0.1}}, "domino.induction.contrastive_weight"),
        ({"references": {"path": REFS}, "induction": {"num_negatives": 0}}, "domino.induction.num_negatives"),
        ({"references": {"path": REFS}, "induction": {"negatives": "all"}}, "domino.induction.negatives"),
        ({"references": {"path": REFS}, "induction": {"init": "text"}}, "domino.induction.init_text"),
        ({"references": {"path": REFS}, "induction": {"l1_only": True}}, "domino.induction.num_sample_tokens"),
        ({"references": {"path": REFS}, "inductoin": {}}, "domino.inductoin"),
        ({}, "domino.references"),
        ({"references": {"path": REFS}, "responses": {"endpoint": {"base_url": "localhost:8000", "model": "m"}}},
         "domino.responses.endpoint.base_url"),
        ({"references": {"path": REFS}, "responses": {"model": "a", "endpoint": {"base_url": "http://h/v1", "model": "m"}}},
         "domino.responses.model and domino.responses.endpoint"),
        ({"references": {"path": REFS}, "filters": {"judge": {"model": "a", "endpoint": {"base_url": "http://h/v1", "model": "m"}}}},
         "domino.filters.judge.model and domino.filters.judge.endpoint"),
    ],
)
def test_invalid_values_name_their_key(validate, block, key):
    with pytest.raises(ConfigError) as info:
        validate({"domino": block})
    assert key in str(info.value)


def test_missing_reference_file_message_says_the_fix(validate):
    with pytest.raises(ConfigError, match="does not exist .*Point it at a JSON Lines file"):
        validate({"domino": {"references": {"path": "nowhere/refs.jsonl"}}})


def test_a_bad_block_under_axolotl_is_one_message_with_the_closest_key_and_exit_status_1(monkeypatch):
    """What `axolotl train` shows: `register` is the first hook; its error is our message, not a traceback."""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.dict import DictDefault

    monkeypatch.delenv("DOMINO_DEBUG", raising=False)
    block = {"references": {"path": REFS}, "induction": {"num_domian_tokens": 8, "init": "rand"}, "num_sample_tokens": 4}
    with pytest.raises(SystemExit) as exit_:
        prepare_plugins(DictDefault(copy.deepcopy({**BASE, "domino": block})))
    message = str(exit_.value.code)
    assert message.startswith("domino: error: the domino: block in the YAML has 3 problems:")
    assert "domino.induction.num_domian_tokens: unknown key; did you mean num_domain_tokens?" in message
    assert "domino.induction.init: given 'rand'; input should be 'random' or 'text'" in message
    assert "domino.num_sample_tokens: unknown key; did you mean domino.induction.num_sample_tokens" in message
    assert "Traceback" not in message and "Extra inputs are not permitted" not in message


def test_zero_sample_tokens_means_plain_prompt_tuning(validate):
    cfg = validate({"domino": {"references": {"path": REFS}, "induction": {"num_sample_tokens": 0}}})
    assert cfg.domino.induction.l1_only is True


def test_induction_adapter_fills_in_datasets_and_checks_batch(validate):
    cfg = validate({"adapter": "domino_prompt", "datasets": None})
    assert cfg.datasets[0]["type"] == "axolotl_domino.references"
    assert cfg.dataloader_drop_last is True
    with pytest.raises(ValueError, match="micro_batch_size: in-batch negatives need at least 2"):
        validate({"adapter": "domino_prompt", "datasets": None, "micro_batch_size": 1})
    with pytest.raises(ValueError, match="datasets: with adapter: domino_prompt"):
        validate({"adapter": "domino_prompt"})
    with pytest.raises(ValueError, match="sample_packing: prompt tuning"):
        validate({"adapter": "domino_prompt", "datasets": None, "sample_packing": True})



def test_zero3_induction_is_accepted_but_not_with_keep_best(validate, tmp_path):
    """ZeRO-3 induction runs (tests/test_zero3.py); `keep: best` needs the diagnostics, which ZeRO-3 skips: refused, by
    name, path or inline config, before any model loads. (The CPU checks, which refuse any DeepSpeed here, are off.)"""
    gpu = {"adapter": "domino_prompt", "datasets": None, "bf16": False, "fp16": False,
           "domino": {"references": {"path": REFS}, "cpu_safe_defaults": False}}
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 3}}')
    best = {**gpu, "domino": {**gpu["domino"], "induction": {"keep": "best"}}}
    for zero3 in ("zero3", {"zero_optimization": {"stage": 3}}, str(path)):
        assert validate({**gpu, "deepspeed": zero3}).deepspeed
        with pytest.raises(ValueError, match="deepspeed: under ZeRO-3 the induction diagnostics do not run.*keep: last"):
            validate({**best, "deepspeed": zero3})
    assert validate({**best, "deepspeed": "zero2"}).deepspeed.endswith("zero2.json")
