"""Shared fixtures: tiny random models built locally (no hub access) and the offline environment."""

from __future__ import annotations

import os

import pytest
import torch

from tiny_models import build_tiny_model_dir

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


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
