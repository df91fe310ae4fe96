"""A chat model answering conversations: the responder's and the judge's local model.

Its chat template renders each conversation, the prompts run as one left-padded batch, and the batch decodes on
`hf.decode` (rows leave as they end: the CPU path) or on the static loop of `static_decode.py` (a preallocated
cache, a compiled step: the GPU path), as `synthesis.decode` chooses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from axolotl_domino.errors import ConfigError
from axolotl_domino.hf import (
    Conversation, Reply, auto_batch_size, decode, last_logits, load_model, pad_token_id, rank_device, row_seeds,
    static_decoding, stop_token_ids, warpers,
)
from axolotl_domino.static_decode import STATIC_BATCH_LIMIT, StaticDecoder


class ChatGenerator:
    """A chat model answering conversations: its chat template, left-padded batches, `decode`.

    `key` is the config key that named the model, for the error when it is not a chat model.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: Any, key: str, decode: str = "auto"):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{key}: the model's tokenizer has no chat template; name a chat model in {key}.")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.stop = stop_token_ids(model, tokenizer)
        self.static = static_decoding(decode, next(model.parameters()).device)
        self._decoder: Any = None  # the static decoder of the last batch shape (one cache held at a time)
        self._key: tuple | None = None

    @classmethod
    def load(cls, name: str, key: str, trust_remote_code: bool = False, cpu_bf16: bool = False,
             decode: str = "auto") -> ChatGenerator:
        tokenizer, model = load_model(name, rank_device(), trust_remote_code, cpu_bf16=cpu_bf16)
        return cls(model, tokenizer, key, decode)

    def auto_batch_size(self, max_new_tokens: int, prompt_tokens: int) -> int:
        """Conversations per batch that fit in half the free memory, for prompts of up to `prompt_tokens`."""
        if self.static:
            return auto_batch_size(self.model, prompt_tokens, max_new_tokens, STATIC_BATCH_LIMIT, prefill=True, static=True)
        return auto_batch_size(self.model, prompt_tokens, max_new_tokens, prefill=True)

    def prompt_tokens(self, conversations: list[Conversation]) -> int:
        """The longest of these conversations in tokens, with the chat template's turns."""
        return max(len(self.tokenizer.apply_chat_template(turns, add_generation_prompt=True)) for turns in conversations)

    @torch.no_grad()
    def __call__(
        self,
        conversations: list[Conversation],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[Reply]:
        """One reply per conversation; `temperature` 0 is greedy, else row r samples from stream (seed, r)."""
        prompts = [
            self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            for turns in conversations
        ]
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        rows, finished = self.generate_ids(ids, max_new_tokens, temperature, top_p, seed)
        return [Reply(self.tokenizer.decode(row, skip_special_tokens=True).strip(), done) for row, done in zip(rows, finished)]

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int = 0) -> tuple[list[list[int]], list[bool]]:
        """The token-level work of `__call__` (prompts already rendered and tokenized): per row the new tokens before
        the first stop id, and whether it stopped. Left-padded to the longest prompt (the dynamic loop), or to a power
        of two of at least 64 tokens (the static loop: a few cache shapes, each compiled once, serve every batch)."""
        longest = max(len(row) for row in prompts)
        width = max(64, 1 << (longest - 1).bit_length()) if self.static else longest
        pad = pad_token_id(self.tokenizer)
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in prompts], device=self.model.device)
        seeds = row_seeds(seed, list(range(len(prompts))), self.model.device) if temperature > 0 else None
        if self.static:
            decoder = self._static_decoder(len(prompts), width + max_new_tokens, temperature, top_p)
            logits = decoder.prefill(_pad_rows(ids, decoder.rows), _pad_rows(mask, decoder.rows))
            return decoder.decode(logits[: len(prompts)], width, max_new_tokens, self.stop, seeds, attention_mask=mask)
        logits, cache = last_logits(self.model, input_ids=ids, attention_mask=mask, use_cache=True,
                                    position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                                    past_key_values=DynamicCache(config=self.model.config))
        return decode(self.model, cache, logits.float(), max_new_tokens, self.stop, warpers(temperature, top_p=top_p),
                      seeds, attention_mask=mask)

    def _static_decoder(self, rows: int, max_len: int, temperature: float, top_p: float) -> StaticDecoder:
        """The static decoder for this batch shape: the last one while it fits (more rows, same length and sampling),
        else a new one (the old cache goes first)."""
        shape = (max(rows, getattr(self._decoder, "rows", 0)), max_len, temperature, top_p)
        if self._decoder is None or self._key != shape:
            self._decoder, self._key = None, shape
            self._decoder = StaticDecoder(self.model, shape[0], max_len, temperature, top_p=top_p)
        return self._decoder


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:
    """`tensor` [n, ...] with copies of its first row appended up to `rows` rows (a static decoder's batch)."""
    pad = rows - tensor.shape[0]
    return torch.cat([tensor, tensor[:1].expand(pad, *tensor.shape[1:])]) if pad > 0 else tensor
