"""The prefix-cached sampler: exact against `generate`, reproducible per sample, stops where it should; on both
decode loops (`hf.decode`, and the static loop of the GPU, run here eagerly on the CPU)."""

from __future__ import annotations

import pytest
import torch

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.hf import auto_batch_size, sample_seed


class _Tokenizer:
    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(map(str, ids))


@pytest.fixture(params=["dynamic", "static"])
def loop(request) -> str:
    return request.param


def _sampler(model, stop=(), **settings) -> PrefixSampler:
    torch.manual_seed(3)
    domain = torch.randn(5, 32)
    settings.setdefault("batch_size", 4)
    return PrefixSampler(model, _Tokenizer(), domain, SynthesisConfig(**settings), list(stop))


def test_greedy_equals_plain_generate(tiny_llama, loop):
    sampler = _sampler(tiny_llama, decode=loop, temperature=0, max_new_tokens=24)
    ours = sampler.sample([0, 1, 2])
    torch.manual_seed(3)  # the same D as _sampler
    domain = torch.randn(5, 32)
    reference = tiny_llama.generate(
        inputs_embeds=domain[None], attention_mask=torch.ones(1, 5, dtype=torch.long),
        do_sample=False, max_new_tokens=24, eos_token_id=2, pad_token_id=0,
    )[0].tolist()
    for sample in ours:  # greedy: every sample is the one `generate` sequence
        assert sample.token_ids == [t for t in reference if t != 2][: len(sample.token_ids)]
        assert sample.finished == (2 in reference)


def test_samples_depend_on_seed_and_index_not_on_batching(tiny_llama, loop):
    sampler = _sampler(tiny_llama, decode=loop, temperature=1.0, max_new_tokens=16)
    together = {s.index: s.token_ids for s in sampler.sample([0, 1, 2, 3])}
    apart = {s.index: s.token_ids for s in sampler.sample([3, 1]) + sampler.sample([0]) + sampler.sample([2])}
    assert together == apart
    assert len({tuple(t) for t in together.values()}) == 4  # sampling: all different
    other_seed = _sampler(tiny_llama, decode=loop, temperature=1.0, max_new_tokens=16, seed=1)
    assert {s.index: s.token_ids for s in other_seed.sample([0, 1, 2, 3])} != together


def test_max_new_tokens_marks_samples_unfinished(tiny_llama, loop):
    for sample in _sampler(tiny_llama, decode=loop, temperature=1.0, max_new_tokens=3).sample([0, 1, 2]):
        assert len(sample.token_ids) <= 3
        assert sample.finished == (len(sample.token_ids) < 3)


def test_stop_strings_end_a_sample(tiny_llama, loop):
    free = _sampler(tiny_llama, decode=loop, temperature=1.0, max_new_tokens=30).sample([0])[0]
    assert len(free.token_ids) > 3
    stop = str(free.token_ids[2])  # the decoded text contains this token's number
    stopped = _sampler(tiny_llama, decode=loop, stop=[stop], temperature=1.0, max_new_tokens=30).sample([0])[0]
    assert stopped.finished and len(stopped.token_ids) <= 3
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]


def test_repetition_penalty_and_top_k_change_the_samples(tiny_llama, loop):
    base = [s.token_ids for s in _sampler(tiny_llama, decode=loop, temperature=1.0, max_new_tokens=12).sample([0, 1])]
    top1 = [s.token_ids for s in _sampler(tiny_llama, decode=loop, temperature=1.0, top_k=1, max_new_tokens=12).sample([0, 1])]
    greedy = [s.token_ids for s in _sampler(tiny_llama, decode=loop, temperature=0, max_new_tokens=12).sample([0, 1])]
    assert top1 == greedy != base
    penalised = _sampler(tiny_llama, decode=loop, temperature=0, repetition_penalty=5.0, max_new_tokens=12).sample([0])[0]
    assert len(set(penalised.token_ids)) > len(set(greedy[0]))


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, 5) == sample_seed(0, 5)
    assert len({sample_seed(s, i) for s in range(3) for i in range(100)}) == 300


def test_auto_batch_size_fills_half_the_free_memory(tiny_llama, monkeypatch):
    from types import SimpleNamespace

    import psutil

    # Per sequence: the key/value cache for 256 + 512 positions (2 layers x K and V x 2 heads x 8 dims x 4 bytes),
    # twice (cat() copies while it grows), plus 4 float32 vocabulary rows of logits.
    per_sequence = 2 * (2 * 2 * 2 * 8 * (256 + 512) * 4) + 4 * 97 * 4
    for available, expected in ((20 * per_sequence + 7, 10), (per_sequence, 1), (10**15, 128)):
        monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
        assert auto_batch_size(tiny_llama, prefix_len=256, max_new_tokens=512) == expected
    assert auto_batch_size(tiny_llama, 256, 512, limit=7) == 7
