"""Hugging Face plumbing every model user shares: loading for a device, stop and pad ids, padding, each row's
random stream, and the dynamic decoding loop.

`decode` is the CPU loop of both generators (`generate.PrefixSampler` for samples from D*, `chat.ChatGenerator`
for answers and verdicts): a row leaves the batch, and its key/value cache, as soon as it ends, so
one long answer does not keep a whole batch decoding padding, and a big batch costs what its rows need. On a GPU
they use the static loop of `static_decode.py` instead (`static_decoding`). Both draw each row's tokens from its
own counter-based stream (`row_uniforms`), so a sample does not depend on its batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)



def rank_device() -> torch.device:
    """This rank's GPU (`LOCAL_RANK`) when CUDA is available, else the CPU.

    A scheduler that gives each task its own GPU shows it as device 0 (one visible device), so the index
    wraps around the visible devices instead of naming one that does not exist.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def inference_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype:
    """bf16 on GPUs that support it, and on a CPU when `cpu_bf16` (the caller's `cpu.use_cpu_bf16`); else float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16 else torch.float32


def load_model(name: str, device: torch.device, trust_remote_code: bool = False, load_weights: bool = True,
               cpu_bf16: bool = False):
    """(tokenizer, causal LM in eval mode on `device`, in `inference_dtype`).

    `load_weights=False` returns no model (the vLLM backend loads its own copy).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    if not load_weights:
        return tokenizer, None
    dtype = inference_dtype(device, cpu_bf16)
    # In bf16 on a CPU, eager attention decodes 1.34x as fast as sdpa (bench/README.md); elsewhere the model's default.
    attention = {"attn_implementation": "eager"} if device.type == "cpu" and dtype == torch.bfloat16 else {}
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code, **attention)
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


# Config keys of output heads that are more than a matmul of the hidden state: their logits need the model's forward.
SCALED_HEADS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier", "output_multiplier",
                "dim_model_base")


def scaled_head(model: PreTrainedModel) -> bool:
    """Whether the model's output head scales or caps its logits (SCALED_HEADS), so only its forward gives them."""
    return any(getattr(model.config.get_text_config(), key, None) for key in SCALED_HEADS)


def last_logits(model: PreTrainedModel, **inputs: Any) -> tuple[Tensor, Any]:
    """One forward: the next-token logits at each row's last position [N, V], and the key/value cache.

    The output embedding multiplies a 2-D [N, hidden] tensor. `model(..., logits_to_keep=1)` multiplies a
    strided [N, 1, hidden] slice instead, which in bf16 on a CPU becomes a batched matmul over N copies of
    the whole output embedding: 1.9 s of a 8.5 s induction step in bf16 (bench/README.md), and N x its size
    in memory for a batch of prompts.
    """
    if scaled_head(model):
        out = model(**inputs, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values
    out = model.get_decoder()(**inputs)
    return model.get_output_embeddings()(out.last_hidden_state[:, -1]), out.past_key_values


# The most sequences `auto_batch_size` puts in one batch (bench/README.md: throughput against batch size).
AUTO_BATCH_LIMIT = 128


def auto_batch_size(model: PreTrainedModel, prefix_len: int, max_new_tokens: int, limit: int = AUTO_BATCH_LIMIT,
                    prefill: bool = False, static: bool = False) -> int:
    """Sequences per batch that fit in half the free memory of the model's device (`fitting_batch`)."""
    parameter = next(model.parameters())
    return fitting_batch(model.config, parameter.element_size(), free_memory(parameter.device), prefix_len,
                         max_new_tokens, limit, prefill, static)


def free_memory(device: torch.device) -> int:
    """Bytes free on a GPU, or available to processes on a CPU node."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def fitting_batch(config: Any, itemsize: int, free: int, prefix_len: int, max_new_tokens: int,
                  limit: int = AUTO_BATCH_LIMIT, prefill: bool = False, static: bool = False) -> int:
    """Sequences per batch that fit in half of `free` bytes (key/value cache + logits per sequence), for a model
    of `config` with weights of `itemsize` bytes (the planner asks it too, with no model loaded).

    `prefill`: each sequence's `prefix_len` prompt tokens run in the batch (chat prompts, not a shared prefix
    run once), so one layer's attention scores (float32 in eager attention) and MLP activations count too. `static`:
    the cache is allocated once at full length (no copies while it grows) and a seen-token mask is kept per row."""
    config = config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_bytes = 2 * config.num_hidden_layers * heads * head_dim * (prefix_len + max_new_tokens) * itemsize
    per_sequence = (1 if static else 2) * kv_bytes + 4 * config.vocab_size * 4  # cat() copies while it grows; logits
    if static:
        per_sequence += config.vocab_size  # the seen-token mask
    if prefill:
        intermediate = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
        per_sequence += config.num_attention_heads * prefix_len**2 * 4 + 3 * prefix_len * intermediate * itemsize
    return max(1, min(limit, int(free * 0.5 // per_sequence)))


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample `index`'s own random stream: independent of batch, shard and rank."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def row_seeds(seed: int, indices: list[int], device: torch.device | str = "cpu") -> Tensor:
    """Each row's stream seed, (seed, index) -> `sample_seed`, as an int64 tensor on `device` ([rows])."""
    return torch.tensor([sample_seed(seed, i) for i in indices], dtype=torch.int64, device=device)


_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, constant: int) -> Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32) held in int64, without overflowing int64: the constant's
    halves are multiplied separately (products < 2**48)."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash with full avalanche (Wellons' lowbias32), on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_uniforms(seeds: Tensor, step: int | Tensor) -> Tensor:
    """One uniform draw in [0, 1) per row, a function of (the row's seed, `step`) alone: counter-based, so a row draws
    the same numbers whatever batch it is in, and all rows draw in a few element-wise kernels on their device (no
    generator per row, no copy from the host). 24 bits, exact in float32."""
    step = torch.as_tensor(step, dtype=torch.int64, device=seeds.device) & _MASK32
    x = _mix32(_mix32(_mix32(step ^ 0x9E3779B9) ^ (seeds >> 32) & _MASK32) ^ (seeds & _MASK32))
    return (x >> 8).to(torch.float32) / float(1 << 24)


def warpers(temperature: float, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0) -> LogitsProcessorList:
    """Hugging Face's own logits processors for these sampling settings (none for greedy)."""
    processors = [RepetitionPenaltyLogitsProcessor(repetition_penalty)] if repetition_penalty != 1 else []
    if temperature > 0:
        processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1:
            processors.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList(processors)


def pick(scores: Tensor, seeds: Tensor | None, step: int | Tensor = 0) -> Tensor:
    """Greedy (no seeds), or one inverse-CDF draw per row from its own stream: `row_uniforms(seeds, step)`."""
    if seeds is None:
        return scores.argmax(dim=-1)
    cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
    picked = torch.searchsorted(cdf, (row_uniforms(seeds, step) * cdf[:, -1])[:, None]).squeeze(1)
    return picked.clamp(max=scores.shape[-1] - 1)


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    cache: DynamicCache,
    logits: Tensor,
    max_new_tokens: int,
    stop_ids: set[int],
    processors: LogitsProcessorList,
    seeds: Tensor | None = None,
    attention_mask: Tensor | None = None,
    hit_stop: Callable[[list[int]], bool] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """Decode a batch whose prompts are in `cache` (`logits`: each row's next-token logits, [b, V]).

    Returns per row the tokens before the first stop id, and whether it stopped (a stop id, or
    `hit_stop(tokens)`) rather than reaching `max_new_tokens`. `seeds`: each row's stream (`row_seeds`) on the
    logits' device, or None for greedy. `attention_mask` [b, prompt length]: left-padded prompts (None: every
    row's prompt is whole).
    """
    b, device = logits.shape[0], logits.device
    tokens: list[list[int]] = [[] for _ in range(b)]
    finished = [False] * b
    active = list(range(b))  # rows still decoding; the cache holds exactly these rows
    history = torch.empty(b, 0, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        scores = processors(history, logits)
        chosen = pick(scores, seeds, step)
        history = torch.cat([history, chosen[:, None]], dim=1)
        for row, token in zip(active, chosen.tolist()):
            if token in stop_ids:
                finished[row] = True
            else:
                tokens[row].append(token)
                finished[row] = hit_stop is not None and hit_stop(tokens[row])
        keep = [j for j, row in enumerate(active) if not finished[row]]
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            rows = torch.tensor(keep, device=device)
            cache.batch_select_indices(rows)
            chosen, history = chosen[rows], history[rows]
            seeds = None if seeds is None else seeds[rows]
            attention_mask = None if attention_mask is None else attention_mask[rows]
            active = [active[j] for j in keep]
        step_inputs: dict[str, Tensor] = {}
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
            step_inputs = {"attention_mask": attention_mask, "position_ids": attention_mask.sum(1, keepdim=True) - 1}
        out = model(input_ids=chosen[:, None], past_key_values=cache, use_cache=True, **step_inputs)
        logits = out.logits[:, -1].float()
    return tokens, finished


def static_decoding(setting: str, device: torch.device) -> bool:
    """`synthesis.decode`: the static loop (static_decode.py) when asked, or on a GPU under `auto`."""
    return setting == "static" or (setting == "auto" and device.type == "cuda")


class Reply(NamedTuple):
    text: str  # up to the first stop token, special tokens removed, stripped
    finished: bool  # ended at a stop token (not cut by max_new_tokens)


Conversation = list[dict[str, str]]  # chat turns: {"role", "content"}
Chat = Callable[..., list[Reply]]
"""(conversations, max_new_tokens, temperature, top_p, seed) -> one `Reply` each: `ChatGenerator` or a server."""
