"""Publishing to the Hub, offline: what would be pushed, the cards, and the errors before any heavy work.

The upload itself (`create_repo` + `upload_folder`) needs the Hub and a token; it is not run here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, constants
from huggingface_hub.utils import filter_repo_objects
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_domino.args import DominoConfig, InductionConfig
from axolotl_domino.induce import DominoPromptModel
from axolotl_domino.pipeline import induction_config, induction_key
from axolotl_domino.publish import ADAPTER_FILES, HubError, check_hub_access


def _uploaded(folder: Path, patterns: list[str]) -> list[str]:
    """The files `upload_folder(allow_patterns=patterns)` sends, by huggingface_hub's own filter."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return sorted(filter_repo_objects(files, allow_patterns=patterns))


def test_offline_mode_and_a_missing_token_stop_a_push_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="domino.dataset.push_to_hub: the Hugging Face Hub is in offline mode"):
        check_hub_access("domino.dataset.push_to_hub")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(HubError, match="domino.induction.push_to_hub: no Hugging Face token; run `hf auth login`"):
        check_hub_access("domino.induction.push_to_hub")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    check_hub_access("domino.induction.push_to_hub")  # a token and online: the push may go ahead


def test_where_d_is_published_does_not_change_the_induction_key(tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"text": "a"}\n{"text": "b"}\n')

    def key(**induction) -> str:
        domino = DominoConfig.model_validate({"references": {"path": str(refs)}, "induction": induction})
        return induction_key(domino, induction_config(domino, "model", {}))

    assert key(push_to_hub="org/domain-tokens", private=False) == key()


def test_d_star_is_a_peft_adapter_with_a_hub_model_card_and_only_it_is_pushed(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    settings = InductionConfig(num_domain_tokens=4, num_sample_tokens=2)
    adapter = tmp_path / "adapter"
    prompt = DominoPromptModel(model, AutoTokenizer.from_pretrained(tiny_model_dir), settings, 3,
                               {"base_model": str(tiny_model_dir), "references_sha256": "ab" * 32})
    prompt.save_pretrained(str(adapter))
    (adapter / "checkpoint-4").mkdir()
    (adapter / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "domino_stage.json").write_text("{}")

    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and "prompt-tuning" in card.data.tags
    assert card.data.base_model is None  # a local path is no Hub id: the metadata must not claim one
    assert "4 soft tokens" in card.text and "from 3 reference samples" in card.text
    assert yaml.safe_load((adapter / "README.md").read_text().split("---")[1])["pipeline_tag"] == "text-generation"
    assert _uploaded(adapter, ADAPTER_FILES) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "domino_induction.json",
        "sample_tokens.safetensors",
    ]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert loaded.peft_config["default"].num_virtual_tokens == 4


def test_a_hub_base_model_is_named_in_the_card_metadata():
    from axolotl_domino.induce import model_card

    settings = InductionConfig(num_domain_tokens=8, num_sample_tokens=8).model_dump()
    card = model_card({"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "num_references": 5, "induction": settings})
    assert ModelCard(card).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
