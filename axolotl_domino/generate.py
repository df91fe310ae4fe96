"""The generator: sample new domain text from D* alone (the prompt is the k domain vectors, nothing else).

`PrefixSampler` is the Hugging Face backend: D is run once, its key/value cache is copied into
every batch, and each sequence then decodes token by token. Sample i draws from its own random
stream seeded by (seed, i), so which batch, shard or rank produces it does not change what is
drawn; the work is split into fixed shards of indices for resumption and for ranks
(`shards.py`). `generate_vllm.py` is the same generator on vLLM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.hf import stop_token_ids


@dataclass
class Sample:
    index: int
    token_ids: list[int]  # generated tokens, without the final EOS
    finished: bool  # ended at EOS or a stop string (not cut by max_new_tokens)


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample `index`'s own random stream: independent of batch, shard and rank."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def auto_batch_size(model: PreTrainedModel, prefix_len: int, max_new_tokens: int, limit: int = 128) -> int:
    """Sequences per batch that fit in half the free memory (key/value cache + logits per sequence)."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    kv_bytes = 2 * config.num_hidden_layers * heads * head_dim * (prefix_len + max_new_tokens) * itemsize
    per_sequence = 2 * kv_bytes + 4 * config.vocab_size * 4  # cat() copies during growth; float32 logits
    device = next(model.parameters()).device
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return max(1, min(limit, int(free * 0.5 // per_sequence)))


class PrefixSampler:
    """Batched sampling from a fixed soft prefix whose key/value cache is computed once."""

    def __init__(self, model: PreTrainedModel, tokenizer, domain: Tensor, settings: SynthesisConfig, stop: list[str]):
        self.model, self.tokenizer, self.settings, self.stop = model.eval(), tokenizer, settings, stop
        self.eos = stop_token_ids(model, tokenizer)
        embeds = domain.to(model.device, model.get_input_embeddings().weight.dtype)[None]
        with torch.no_grad():
            out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        self.prefix_kv = [(keys, values) for keys, values, *_ in out.past_key_values]
        self.prefix_logits = out.logits[:, -1].float()  # [1, V]
        self.prefix_len = embeds.shape[1]
        warpers = [RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)] if settings.repetition_penalty != 1 else []
        if settings.temperature > 0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1:
                warpers.append(TopPLogitsWarper(settings.top_p))
        self.processors = LogitsProcessorList(warpers)
        self.batch_size = settings.batch_size or auto_batch_size(model, self.prefix_len, settings.max_new_tokens)

    def _pick(self, scores: Tensor, generators: list[torch.Generator]) -> Tensor:
        """Greedy, or one inverse-CDF draw per row from that row's own generator (vectorised)."""
        if self.settings.temperature == 0:
            return scores.argmax(dim=-1)
        cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
        uniforms = torch.cat([torch.rand(1, generator=g) for g in generators]).to(cdf.device)
        picked = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None]).squeeze(1)
        return picked.clamp(max=scores.shape[-1] - 1)

    def _hit_stop_string(self, tokens: list[int]) -> bool:
        tail = self.tokenizer.decode(tokens[-32:], skip_special_tokens=False)
        return any(s in tail for s in self.stop)

    @torch.no_grad()
    def sample(self, indices: list[int]) -> list[Sample]:
        """One batch: the samples with these indices, each from its own random stream."""
        b, device = len(indices), self.model.device
        generators = [torch.Generator().manual_seed(sample_seed(self.settings.seed, i)) for i in indices]
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in self.prefix_kv],
            config=self.model.config,
        )
        logits = self.prefix_logits.expand(b, -1)
        tokens: list[list[int]] = [[] for _ in indices]
        finished = [False] * b
        active = list(range(b))  # batch rows still decoding; the cache holds exactly these rows
        history = torch.empty(b, 0, dtype=torch.long, device=device)
        for step in range(self.settings.max_new_tokens):
            scores = self.processors(history, logits)
            chosen = self._pick(scores, [generators[r] for r in active]).to(device)
            history = torch.cat([history, chosen[:, None]], dim=1)
            for row, token in zip(active, chosen.tolist()):
                if token in self.eos:
                    finished[row] = True
                else:
                    tokens[row].append(token)
                    finished[row] = bool(self.stop) and self._hit_stop_string(tokens[row])
            keep = [j for j, row in enumerate(active) if not finished[row]]
            if not keep or step == self.settings.max_new_tokens - 1:
                break
            if len(keep) < len(active):
                rows = torch.tensor(keep, device=device)
                cache.batch_select_indices(rows)
                chosen, history = chosen[rows], history[rows]
                active = [active[j] for j in keep]
            logits = self.model(input_ids=chosen[:, None], past_key_values=cache, use_cache=True).logits[:, -1].float()
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
