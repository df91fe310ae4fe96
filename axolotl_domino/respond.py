"""Responses for instruction-style domains: a responder model answers each synthetic instruction.

The responder (by default the base model, or a server named by `responses.endpoint`) sees each
instruction as a user turn of its chat template, after an optional system prompt (`hf.ChatGenerator`
here, `endpoint.EndpointChat` over HTTP). A response that hits max_new_tokens before EOS is marked
unfinished.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from axolotl_domino.args import ResponsesConfig
from axolotl_domino.endpoint import EndpointChat, requests_per_call
from axolotl_domino.chat import ChatGenerator
from axolotl_domino.hf import Chat, Conversation, Reply, sample_seed


class Responder:
    def __init__(self, chat: Chat, settings: ResponsesConfig, batch_size: int | None = None):
        self.generator, self.settings, self._batch_size = chat, settings, batch_size

    @classmethod
    def of(cls, settings: ResponsesConfig, model: PreTrainedModel | None, tokenizer: Any, decode: str = "auto") -> Responder:
        """The server named by `settings.endpoint`, else `model` (loaded by the caller: it may be the base model),
        decoding as `decode` (`synthesis.decode`) says."""
        if settings.endpoint is not None:
            return cls(EndpointChat(settings.endpoint, "domino.responses.endpoint"), settings)
        return cls(ChatGenerator(model, tokenizer, "domino.responses.model", decode), settings)

    def batch_size(self, instructions: list[str]) -> int:
        """Instructions per call: as given (a vLLM engine takes a whole shard), `concurrency` requests in flight
        for a server, else one batch of the local model (`responses.batch_size`, or what fits in memory for the
        longest of `instructions`)."""
        if self._batch_size is not None:
            return self._batch_size
        local = self.generator if isinstance(self.generator, ChatGenerator) else None
        return requests_per_call(self.settings.endpoint, self.settings.batch_size, local, self.settings.max_new_tokens,
                                 [self.messages(i) for i in instructions])

    def messages(self, instruction: str) -> Conversation:
        turns = [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else []
        user = self.settings.instruction_template.replace("{instruction}", instruction)
        return turns + [{"role": "user", "content": user}]

    def answer(self, instructions: list[str], seed: int) -> list[Reply]:
        """(response, finished) per instruction; `seed` makes sampled responses reproducible."""
        s = self.settings
        return self.generator(
            [self.messages(i) for i in instructions], s.max_new_tokens, s.temperature, s.top_p, sample_seed(seed, 0)
        )
