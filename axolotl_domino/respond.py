"""Responses for instruction-style domains: a responder model answers each synthetic instruction.

The responder (by default the base model) sees each instruction as a user turn of its own chat
template, after an optional system prompt, and answers in left-padded batches with plain
`generate`. A response that hits max_new_tokens before EOS is marked unfinished.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from axolotl_domino.args import ResponsesConfig
from axolotl_domino.generate import sample_seed, stop_token_ids


class Responder:
    def __init__(self, model: PreTrainedModel, tokenizer, settings: ResponsesConfig):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "domino.responses.model: the responder's tokenizer has no chat template; name a chat model "
                "in domino.responses.model."
            )
        self.model, self.tokenizer, self.settings = model.eval(), tokenizer, settings
        self.eos = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def messages(self, instruction: str) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else []
        user = self.settings.instruction_template.replace("{instruction}", instruction)
        return turns + [{"role": "user", "content": user}]

    @torch.no_grad()
    def answer(self, instructions: list[str], seed: int) -> list[tuple[str, bool]]:
        """(response, finished) per instruction; `seed` makes sampled responses reproducible."""
        prompts = [
            self.tokenizer.apply_chat_template(self.messages(i), add_generation_prompt=True, tokenize=False)
            for i in instructions
        ]
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(self.model.device)
        sampling = self.settings.temperature > 0
        torch.manual_seed(sample_seed(seed, 0))
        out = self.model.generate(
            **batch,
            max_new_tokens=self.settings.max_new_tokens,
            do_sample=sampling,
            temperature=self.settings.temperature if sampling else None,
            top_p=self.settings.top_p if sampling else None,
            top_k=None,
            eos_token_id=sorted(self.eos),
            pad_token_id=self.pad_id,
        )
        results = []
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            stop = next((j for j, token in enumerate(row) if token in self.eos), None)
            text = self.tokenizer.decode(row if stop is None else row[:stop], skip_special_tokens=True).strip()
            results.append((text, stop is not None))
        return results
