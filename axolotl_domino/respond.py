"""Responses for instruction-style domains: a responder model answers each synthetic instruction.

The responder (by default the base model) sees each instruction as a user turn of its own chat
template, after an optional system prompt (`hf.ChatGenerator`). A response that hits
max_new_tokens before EOS is marked unfinished.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from axolotl_domino.args import ResponsesConfig
from axolotl_domino.generate import sample_seed
from axolotl_domino.hf import ChatGenerator, Conversation, Reply


class Responder:
    def __init__(self, model: PreTrainedModel, tokenizer: Any, settings: ResponsesConfig):
        self.generator = ChatGenerator(model, tokenizer, "domino.responses.model")
        self.settings = settings

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
