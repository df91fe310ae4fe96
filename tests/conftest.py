"""Shared fixtures: tiny random models built locally (no hub access) and the offline environment."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")


@pytest.fixture
def tiny_llama():
    """A 2-layer random Llama (fp32, eval mode, frozen): fast enough for exact-math tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


WORDS = (
    "write a function to find the sum of list string number python return def if else for in range "
    "and or not max min sort reverse count first last even odd prime square cube total value key"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


def build_tiny_model_dir(path, seed: int = 0):
    """A saved tiny random Llama with a word-level tokenizer and a chat template (no hub access)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "</s>", "<s>", "<unk>", "system", "user", "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def build_scripted_chat_model_dir(path, reply: list[str]):
    """A real saved Llama + tokenizer whose greedy reply to any chat prompt is the words `reply`, then EOS.

    Attention and MLP outputs are zeroed, so each position sees only its own (one-hot) token embedding,
    and the LM head maps every token of the chain "assistant" -> reply[0] -> ... -> reply[-1] -> </s> to
    its successor: a fixture whose behaviour the test states, run through the real `generate`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<s>", "<unk>", "system", "user", "assistant", *WORDS, *reply]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    hidden = 4 * ((len(vocab) + 3) // 4)  # one-hot embeddings need hidden >= vocabulary
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    chain = ["assistant", *reply, "</s>"]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(len(vocab), hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for current, following in zip(chain, chain[1:]):
            model.lm_head.weight[vocab[following]] = model.model.embed_tokens.weight[vocab[current]]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class HashEmbedder:
    """Deterministic, fast stand-in for the scorecard's embedder: hashed bag of words, L2-normalised
    (identical texts -> identical rows)."""

    name = "hash-bow-64"

    def encode(self, texts, batch_size=64):
        import hashlib

        import numpy as np

        from axolotl_domino.score.embedder import l2_normalize

        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        return l2_normalize(out)


@pytest.fixture
def hash_embedder():
    return HashEmbedder()
