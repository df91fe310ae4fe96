"""Hugging Face plumbing every model user shares: loading for a device, stop and pad ids, padding,
and one batched chat generator (the responder and the judge are both "a chat model answering turns").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel


def rank_device() -> torch.device:
    """This rank's GPU (`LOCAL_RANK`) when CUDA is available, else the CPU.

    A scheduler that gives each task its own GPU shows it as device 0 (one visible device), so the index
    wraps around the visible devices instead of naming one that does not exist.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def load_model(name: str, device: torch.device, trust_remote_code: bool = False, load_weights: bool = True):
    """(tokenizer, causal LM in eval mode on `device`): bf16 on GPUs that support it, float32 elsewhere.

    `load_weights=False` returns no model (the vLLM backend loads its own copy).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if not load_weights:
        return tokenizer, None
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
    return tokenizer, model.to(device).eval()


def hidden_size(name: str, trust_remote_code: bool = False) -> int:
    """The model's hidden size from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code).get_text_config().hidden_size


def stop_token_ids(model: PreTrainedModel, tokenizer: Any) -> set[int]:
    """EOS ids from the tokenizer and the generation config (chat models often list several)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (padding is masked out, so any id works; these are in range)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, T] ids and attention mask, padded on the right."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids, mask


class Reply(NamedTuple):
    text: str  # up to the first stop token, special tokens removed, stripped
    finished: bool  # ended at a stop token (not cut by max_new_tokens)


Conversation = list[dict[str, str]]  # chat turns: {"role", "content"}
Chat = Callable[..., list[Reply]]
"""(conversations, max_new_tokens, temperature, top_p, seed) -> one `Reply` each: `ChatGenerator` or a server."""


class ChatGenerator:
    """A chat model answering conversations: its chat template, left-padded batches, plain `generate`.

    `key` is the config key that named the model, for the error when it is not a chat model.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: Any, key: str):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{key}: the model's tokenizer has no chat template; name a chat model in {key}.")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.stop = stop_token_ids(model, tokenizer)

    @classmethod
    def load(cls, name: str, key: str, trust_remote_code: bool = False) -> ChatGenerator:
        tokenizer, model = load_model(name, rank_device(), trust_remote_code)
        return cls(model, tokenizer, key)

    @torch.no_grad()
    def __call__(
        self,
        conversations: list[Conversation],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[Reply]:
        """One reply per conversation; `temperature` 0 is greedy, else sampling seeded by `seed`."""
        prompts = [
            self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            for turns in conversations
        ]
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(self.model.device)
        sampling = temperature > 0
        if sampling:  # greedy replies need no seed; the judge's must not reset the global generator
            torch.manual_seed(seed)
        out = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            eos_token_id=sorted(self.stop),
            pad_token_id=pad_token_id(self.tokenizer),
        )
        replies = []
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            end = next((j for j, token in enumerate(row) if token in self.stop), None)
            text = self.tokenizer.decode(row if end is None else row[:end], skip_special_tokens=True).strip()
            replies.append(Reply(text, end is not None))
        return replies
