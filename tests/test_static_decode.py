"""The static decode loop (the GPU path) gives what the dynamic loop gives, row for row, for the sampler and the
chat generator, eagerly and compiled (on the CPU; CUDA graphs themselves need a GPU: bench/gpu_smoke.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.chat import ChatGenerator
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.hf import row_seeds, row_uniforms
from test_generate import _Tokenizer


def _samples(model, decode: str, indices: list[int], **settings) -> dict[int, tuple[list[int], bool]]:
    torch.manual_seed(3)
    domain = torch.randn(5, 32)
    settings = {"batch_size": 3, "max_new_tokens": 20, **settings, "decode": decode}
    sampler = PrefixSampler(model, _Tokenizer(), domain, SynthesisConfig(**settings), [])
    return {s.index: (s.token_ids, s.finished) for s in sampler.sample_many(indices)}


@pytest.mark.parametrize("settings", [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 5, "top_p": 0.9},
    {"temperature": 1.0, "repetition_penalty": 1.8},
])
def test_the_static_loop_samples_what_the_dynamic_loop_samples(tiny_llama, settings):
    """7 samples in batches of 3: the last batch is padded with filler rows, which must not change anything."""
    indices = list(range(7))
    assert _samples(tiny_llama, "static", indices, **settings) == _samples(tiny_llama, "dynamic", indices, **settings)


def test_the_compiled_step_gives_the_eager_steps_samples(tiny_llama):
    from axolotl_domino.static_decode import StaticDecoder

    torch.manual_seed(3)
    domain = torch.randn(5, 32)
    settings = SynthesisConfig(temperature=1.0, max_new_tokens=12, batch_size=4, decode="static")
    sampler = PrefixSampler(tiny_llama, _Tokenizer(), domain, settings, [])
    eager = {s.index: s.token_ids for s in sampler.sample(list(range(4)))}
    sampler.static = StaticDecoder(tiny_llama, 4, 5 + 12, 1.0, compile=True)  # inductor on the CPU
    assert {s.index: s.token_ids for s in sampler.sample(list(range(4)))} == eager


def test_the_chat_generator_answers_alike_on_both_loops(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[{"role": "user", "content": text}] for text in ("write a function", "sum", "find the sum of a list")]
    dynamic = ChatGenerator(model, tokenizer, "domino.responses.model", decode="dynamic")
    static = ChatGenerator(model, tokenizer, "domino.responses.model", decode="static")
    for kwargs in ({}, {"temperature": 1.0, "seed": 5}, {"temperature": 0.8, "top_p": 0.9, "seed": 2}):
        assert static(conversations, max_new_tokens=10, **kwargs) == dynamic(conversations, max_new_tokens=10, **kwargs)
    # A smaller batch after a larger one reuses the decoder (filler rows), and answers as alone.
    assert static(conversations[:1], max_new_tokens=10) == dynamic(conversations[:1], max_new_tokens=10)


def test_each_rows_draws_come_from_its_own_counter_based_stream():
    seeds = row_seeds(0, list(range(20000)))
    draws = row_uniforms(seeds, 3)
    assert 0.0 <= float(draws.min()) and float(draws.max()) < 1.0
    assert abs(float(draws.mean()) - 0.5) < 0.01 and abs(float(draws.var()) - 1 / 12) < 0.005
    counts = torch.histc(draws, bins=10, min=0, max=1)
    assert float(((counts - 2000) ** 2 / 2000).sum()) < 30  # chi-square, 9 degrees of freedom: p > 0.0005
    alone = row_uniforms(row_seeds(0, [7]), 3)
    assert torch.equal(alone, draws[7:8])  # the same row draws the same, whatever its batch
    assert not torch.equal(row_uniforms(seeds[:100], 4), draws[:100])  # and differently at the next step
