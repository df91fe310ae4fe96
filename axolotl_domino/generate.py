"""The generator: sample new domain text from D* alone (the prompt is the k domain vectors, nothing else).

`PrefixSampler` is the Hugging Face backend: D is run once, its key/value cache is copied into
every batch, and each sequence then decodes token by token: on `hf.decode` (rows leave the batch as they end: the
CPU path) or on `static_decode.StaticDecoder` (a preallocated cache and a compiled step: the GPU path). Sample i draws from its own random
stream seeded by (seed, i), so which batch, shard or rank produces it does not change what is
drawn; the work is split into fixed shards of indices for resumption and for ranks
(`shards.py`). `generate_vllm.py` is the same generator on vLLM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.hf import (
    AUTO_BATCH_LIMIT, auto_batch_size, decode, last_logits, row_seeds, static_decoding, stop_token_ids, warpers,
)
from axolotl_domino.static_decode import STATIC_BATCH_LIMIT, StaticDecoder


@dataclass
class Sample:
    index: int
    token_ids: list[int]  # generated tokens, without the final EOS
    finished: bool  # ended at EOS or a stop string (not cut by max_new_tokens)


class PrefixSampler:
    """Batched sampling from a fixed soft prefix whose key/value cache is computed once."""

    def __init__(self, model: PreTrainedModel, tokenizer, domain: Tensor, settings: SynthesisConfig, stop: list[str]):
        self.model, self.tokenizer, self.settings, self.stop = model.eval(), tokenizer, settings, stop
        self.eos = stop_token_ids(model, tokenizer)
        embeds = domain.to(model.device, model.get_input_embeddings().weight.dtype)[None]
        with torch.no_grad():
            logits, cache = last_logits(model, inputs_embeds=embeds, use_cache=True)
        self.prefix_kv = [(keys, values) for keys, values, *_ in cache]
        self.prefix_logits = logits.float()  # [1, V]
        self.prefix_len = embeds.shape[1]
        self.processors = warpers(settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty)
        self.static: StaticDecoder | None = None
        if static_decoding(settings.decode, self.prefix_logits.device):  # one cache and one compiled step for all batches
            self.batch_size = settings.batch_size or auto_batch_size(model, self.prefix_len, settings.max_new_tokens,
                                                                     STATIC_BATCH_LIMIT, static=True)
            self.static = StaticDecoder(model, self.batch_size, self.prefix_len + settings.max_new_tokens,
                                        settings.temperature, settings.top_k, settings.top_p, settings.repetition_penalty)
        else:
            self.batch_size = settings.batch_size or auto_batch_size(model, self.prefix_len, settings.max_new_tokens,
                                                                     AUTO_BATCH_LIMIT)

    def _hit_stop_string(self, tokens: list[int]) -> bool:
        tail = self.tokenizer.decode(tokens[-32:], skip_special_tokens=False)
        return any(s in tail for s in self.stop)

    @torch.no_grad()
    def sample(self, indices: list[int]) -> list[Sample]:
        """One batch: the samples with these indices, each from its own random stream."""
        b, settings = len(indices), self.settings
        seeds = row_seeds(settings.seed, indices, self.prefix_logits.device) if settings.temperature > 0 else None
        hit_stop = self._hit_stop_string if self.stop else None
        if self.static is not None:
            self.static.fill_prefix(self.prefix_kv)
            tokens, finished = self.static.decode(self.prefix_logits.expand(b, -1), self.prefix_len, settings.max_new_tokens,
                                                  self.eos, seeds, hit_stop=hit_stop)
            return [Sample(index=i, token_ids=t, finished=f) for i, t, f in zip(indices, tokens, finished)]
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in self.prefix_kv],
            config=self.model.config,
        )
        tokens, finished = decode(
            self.model, cache, self.prefix_logits.expand(b, -1), settings.max_new_tokens, self.eos, self.processors, seeds,
            hit_stop=hit_stop,
        )
        return [Sample(index=i, token_ids=t, finished=f) for i, t, f in zip(indices, tokens, finished)]

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller (the vLLM sampler shuts its engine down here)."""

    def sample_many(self, indices: list[int], progress: tqdm | None = None) -> Iterator[Sample]:
        """All `indices`, batch by batch, updating `progress` with samples/s and tokens/s."""
        started, produced = time.perf_counter(), 0
        for start in range(0, len(indices), self.batch_size):
            batch = self.sample(indices[start : start + self.batch_size])
            produced += sum(len(s.token_ids) + s.finished for s in batch)
            if progress is not None:
                progress.update(len(batch))
                progress.set_postfix(tokens_per_s=f"{produced / (time.perf_counter() - started):.1f}")
            yield from batch
