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
