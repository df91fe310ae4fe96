"""The domino_prompt adapter on a tiny random model: what trains, what is saved, how PEFT loads it."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from axolotl_domino.args import InductionConfig
from axolotl_domino.induce import METADATA_FILE, SAMPLE_TOKENS_FILE, DominoPromptModel
from axolotl_domino.loss import domino_loss


class _Tokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 90 for c in text]}


def _model(tiny_llama, **settings) -> DominoPromptModel:
    return DominoPromptModel(
        tiny_llama, _Tokenizer(), InductionConfig(**settings), num_references=5, metadata={"base_model": "tiny"}
    )


def test_only_domain_and_sample_tokens_train(tiny_llama):
    model = _model(tiny_llama, num_domain_tokens=4, num_sample_tokens=3)
    trainable = {name: p.shape for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "prompt_encoder.default.embedding.weight": (4, 32),
        "domino_sample.weight": (5, 3, 32),
    }


def test_random_init_matches_embedding_scale(tiny_llama):
    model = _model(tiny_llama, num_domain_tokens=64, num_sample_tokens=0)
    emb_norm = tiny_llama.get_input_embeddings().weight.norm(dim=1).mean()
    assert model.domain_tokens.norm(dim=1).mean().item() == pytest.approx(emb_norm.item(), rel=0.2)
    assert model.domino_sample is None  # l = 0: plain prompt tuning


def test_text_init_repeats_the_text_embeddings(tiny_llama):
    model = _model(tiny_llama, num_domain_tokens=5, num_sample_tokens=0, init="text", init_text="ab")
    ids = _Tokenizer()("ababa")["input_ids"]
    torch.testing.assert_close(model.domain_tokens.detach(), tiny_llama.get_input_embeddings().weight[ids])


def test_low_rank_sample_tokens(tiny_llama):
    model = _model(tiny_llama, num_domain_tokens=2, num_sample_tokens=3, sample_token_rank=4)
    shapes = {name: p.shape for name, p in model.domino_sample.named_parameters()}
    assert shapes == {"private": (5, 3, 4), "shared": (4, 32)}
    assert model.domino_sample(torch.tensor([0, 4])).shape == (2, 3, 32)


def test_forward_with_ref_index_is_the_domino_loss(tiny_llama):
    model = _model(tiny_llama, num_domain_tokens=2, num_sample_tokens=2, likelihood="sequence")
    ids = torch.randint(3, 97, (3, 5))
    mask = torch.ones_like(ids)
    index = torch.tensor([4, 0, 2])
    out = model(input_ids=ids, attention_mask=mask, ref_index=index)
    direct = domino_loss(tiny_llama, model.domain_tokens, model.domino_sample(index), ids, mask, length_normalized=False)
    torch.testing.assert_close(out.loss, direct.loss)
    out.loss.backward()
    assert model.domino_sample.weight.grad[[1, 3]].abs().sum() == 0  # rows outside the batch untouched
    assert model.domino_sample.weight.grad[[0, 2, 4]].abs().sum() > 0


def test_saves_a_standard_peft_adapter_plus_sample_tokens(tiny_llama, tmp_path):
    model = _model(tiny_llama, num_domain_tokens=3, num_sample_tokens=2, contrastive_weight=0.5)
    model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 3
    assert load_file(str(tmp_path / SAMPLE_TOKENS_FILE))["weight"].shape == (5, 2, 32)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    assert metadata["num_references"] == 5 and metadata["induction"]["contrastive_weight"] == 0.5
    assert not list(tmp_path.glob(".*tmp*"))

    loaded = PeftModel.from_pretrained(tiny_llama, str(tmp_path))
    torch.testing.assert_close(loaded.get_prompt(batch_size=1)[0], model.domain_tokens.detach())
    out = loaded.generate(input_ids=torch.tensor([[5]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 4)


def test_plugin_hooks_are_no_ops_without_a_domino_block():
    from axolotl.utils.dict import DictDefault

    from axolotl_domino import DominoPlugin

    plugin, cfg = DominoPlugin(), DictDefault({"adapter": "lora"})
    raw = {"adapter": "lora", "bf16": "auto"}
    plugin.register(raw)
    assert raw == {"adapter": "lora", "bf16": "auto"}
    assert plugin.load_datasets(cfg) is None
    assert plugin.load_adapter(None, cfg) is None
    assert plugin.get_trainer_cls(cfg) is None
    assert plugin.get_collator_cls_and_kwargs(cfg) is None
