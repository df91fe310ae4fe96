"""The decode loop for GPUs: a preallocated key/value cache and one compiled step, with no host round trip per token.

On a GPU the dynamic loop (`hf.decode`) is not held back by arithmetic: each token is a few hundred small kernel
launches, a `.tolist()` of the chosen tokens, and a copy of the whole cache whenever a row ends. Measured on an
H200 with a 7B model at batch 64 (issue 23), it ran at 13% of the memory-bandwidth bound, no faster than HF's
batched `generate`. Here instead:

- transformers' `StaticCache` holds every row's keys and values at fixed addresses for `max_len` positions;
  a shared prefix's keys and values are copied into it once (the sampler), or the prompts are run into it once
  (the responder and the judge, left-padded);
- the step (the model's forward on one token per row, the logits processors, and `hf.pick`'s counter-based draw
  from each row's own stream) runs under `torch.compile(mode="reduce-overhead")`, which on a GPU records it as a
  CUDA graph and replays it each step (transformers' static cache is built for exactly this: we use it rather than
  capturing graphs ourselves);
- rows that end keep decoding, since a fixed batch shape is what makes the step replayable; what they produce after
  their end is ignored. The ends are read back every `CHECK_EVERY` steps, in one small copy, to stop once all rows
  have ended; the tokens stay on the device until the batch is done and come back in one copy;
- repetition penalty uses a [rows, vocabulary] mask of the tokens seen (a fixed shape; the same penalty as HF's
  processor), stop strings are found on the host after the batch (a row's tokens up to its first stop string are
  what the dynamic loop stops at: every row draws from its own stream, whatever the others do).

The result equals `hf.decode`'s row for row (greedy exactly; sampled up to float rounding, tested on the CPU,
where the same code runs compiled by inductor or eagerly). Batches are padded to the decoder's row count with
copies of their first row, which are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers import LogitsProcessorList, PreTrainedModel, StaticCache

from axolotl_domino.hf import pick, warpers

CHECK_EVERY = 16  # steps between reads of the rows' ends (each is one device-to-host copy of `rows` booleans)
# The most rows the automatic batch size gives a static decoder: a step reads the weights once for all rows, so on a
# GPU the batch can grow well past the dynamic loop's 128 while memory allows (issue 23).
STATIC_BATCH_LIMIT = 512


class StaticDecoder:
    """Decodes batches of up to `rows` sequences of at most `max_len` positions (prompt + new tokens) with one cache
    and one compiled step, reused from batch to batch."""

    def __init__(self, model: PreTrainedModel, rows: int, max_len: int, temperature: float, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, compile: bool | None = None):
        self.model, self.rows, self.max_len = model, rows, max_len
        text = model.config.get_text_config()
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        parameter = next(model.parameters())
        self.device, self.vocab = parameter.device, text.vocab_size
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.cache.early_initialization(rows, heads, head_dim, parameter.dtype, self.device)
        self.greedy = temperature == 0
        self.processors: LogitsProcessorList = warpers(temperature, top_k, top_p)  # shape-static: scores only
        self.penalty = repetition_penalty
        step = self._step
        if compile if compile is not None else self.device.type == "cuda":  # on a CPU it runs as it is, unless asked
            step = torch.compile(step, mode="reduce-overhead", dynamic=False)
        self.step = step

    def _scores(self, logits: Tensor, seen: Tensor) -> Tensor:
        """The logits processors on one step's logits (float32), repetition penalty from the seen-token mask."""
        if self.penalty != 1.0:
            logits = torch.where(seen, torch.where(logits < 0, logits * self.penalty, logits / self.penalty), logits)
        for processor in self.processors:  # each reads the scores alone (no history): traceable as one graph
            logits = processor(None, logits)
        return logits

    def _step(self, tokens: Tensor, positions: Tensor, cache_position: Tensor, mask: Tensor, seen: Tensor,
              seeds: Tensor, step: Tensor) -> Tensor:
        """One token per row: forward on `tokens` [rows, 1] at `positions`, then the next token of each row."""
        logits = self.model(input_ids=tokens, position_ids=positions, cache_position=cache_position,
                            attention_mask=mask, past_key_values=self.cache, use_cache=True).logits[:, -1].float()
        return pick(self._scores(logits, seen), None if self.greedy else seeds, step)

    def _reset(self) -> None:
        self.cache.reset()

    def fill_prefix(self, prefix_kv: list[tuple[Tensor, Tensor]]) -> None:
        """Every row's cache starts with one shared prefix's keys and values ([1, heads, p, head_dim] per layer)."""
        self._reset()
        for layer, (keys, values) in zip(self.cache.layers, prefix_kv):
            p = keys.shape[2]
            layer.keys[:, :, :p].copy_(keys.expand(self.rows, -1, -1, -1))
            layer.values[:, :, :p].copy_(values.expand(self.rows, -1, -1, -1))
            layer.cumulative_length.fill_(p)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Run left-padded prompts ([rows, T]) into the cache; return each row's next-token logits [rows, V]."""
        self._reset()
        mask = self._full_mask(attention_mask)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=(attention_mask.cumsum(1) - 1).clamp(min=0),
                         cache_position=torch.arange(input_ids.shape[1], device=self.device), past_key_values=self.cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _full_mask(self, attention_mask: Tensor) -> Tensor:
        """A [rows, max_len] mask: the prompts' padding masked, every later position open (causality masks the
        future ones): one shape for every step."""
        mask = torch.ones(self.rows, self.max_len, dtype=attention_mask.dtype, device=self.device)
        mask[:, : attention_mask.shape[1]] = attention_mask
        return mask

    @torch.no_grad()
    def decode(self, logits: Tensor, prompt_len: int, max_new_tokens: int, stop_ids: set[int], seeds: Tensor | None,
               attention_mask: Tensor | None = None, hit_stop: Callable[[list[int]], bool] | None = None,
               ) -> tuple[list[list[int]], list[bool]]:
        """Decode after `fill_prefix` or `prefill` (`logits`: each row's next-token logits [n, V], n <= rows).

        `prompt_len`: cached positions before the first new token. Returns what `hf.decode` returns: per row the
        tokens before the first stop id (or through the first stop string), and whether it stopped."""
        n = logits.shape[0]
        if prompt_len + max_new_tokens > self.max_len:
            raise ValueError(f"{prompt_len} + {max_new_tokens} positions do not fit a decoder of {self.max_len}")
        pad = self.rows - n  # filler rows: copies of row 0, dropped at the end
        logits = torch.cat([logits, logits[:1].expand(pad, -1)]) if pad else logits
        seeds = torch.zeros(self.rows, dtype=torch.int64, device=self.device) if seeds is None else \
            torch.cat([seeds, seeds[:1].expand(pad)]) if pad else seeds
        stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=self.device)
        if attention_mask is None:
            mask = torch.ones(self.rows, self.max_len, dtype=torch.long, device=self.device)
            positions = torch.full((self.rows, 1), prompt_len, dtype=torch.long, device=self.device)
        else:
            attention_mask = torch.cat([attention_mask, attention_mask[:1].expand(pad, -1)]) if pad else attention_mask
            mask = self._full_mask(attention_mask)
            positions = attention_mask.sum(1, keepdim=True)
        out = torch.zeros(self.rows, max_new_tokens, dtype=torch.long, device=self.device)
        ended = torch.zeros(self.rows, dtype=torch.bool, device=self.device)
        seen = torch.zeros(self.rows, self.vocab, dtype=torch.bool, device=self.device)
        cache_position = torch.tensor([prompt_len], dtype=torch.long, device=self.device)
        step = torch.zeros((), dtype=torch.long, device=self.device)
        chosen = pick(self._scores(logits, seen), None if self.greedy else seeds, step)
        steps = max_new_tokens
        for s in range(max_new_tokens):
            out[:, s] = chosen
            ended |= torch.isin(chosen, stops)
            if s == max_new_tokens - 1 or ((s + 1) % CHECK_EVERY == 0 and bool(ended[:n].all())):
                steps = s + 1
                break
            seen.scatter_(1, chosen[:, None], True)
            step += 1
            chosen = self.step(chosen[:, None], positions, cache_position, mask, seen, seeds, step).clone()
            positions += 1
            cache_position += 1
        return _rows(out[:n, :steps].tolist(), stop_ids, hit_stop)


def _rows(rows: list[list[int]], stop_ids: set[int], hit_stop: Callable[[list[int]], bool] | None) -> tuple[list[list[int]], list[bool]]:
    """Each row cut where the dynamic loop would have stopped it: before its first stop id, or through the token
    that completed a stop string."""
    tokens, finished = [], []
    for row in rows:
        kept: list[int] = []
        done = False
        for token in row:
            if token in stop_ids:
                done = True
                break
            kept.append(token)
            if hit_stop is not None and hit_stop(kept):
                done = True
                break
        tokens.append(kept)
        finished.append(done)
    return tokens, finished
