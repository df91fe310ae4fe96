"""Plan-time estimates of each stage's time and peak memory, from the model's config and the YAML alone.

Never loads weights: the parameter count comes from the model built on the `meta` device. Time is
FLOPs over a measured rate:

    seconds = FLOPs / (matmul FLOP/s measured here x efficiency) + start-up

with N parameters and FLOPs per token of 2N for a forward pass (generation, scoring), 4N for induction
(forward + gradients of the activations: the model is frozen, only D and S learn) and 6N for full SFT
(LoRA: 4N). Generated lengths are taken at their caps (`max_new_tokens`), so generation estimates are
upper bounds. Peak memory is the largest single process: weights, plus for induction the activations of
one micro-batch (ACTIVATION_BYTES per token, layer and hidden unit), a logits chunk, and D and S with
gradient and two Adam moments; for generation the key/value cache of one batch (docs/SCALING.md has the
same terms at the paper's scale).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from axolotl_domino.args import DominoConfig
from axolotl_domino.loss import LOGIT_CHUNK_TOKENS

# Share of the measured matmul rate a stage reaches: training steps (large batched matmuls, forward and
# backward) and generation and scoring (token-by-token decoding, sampling, Python). Set from the quickstart
# on 2 quiet CPU cores (bench/README.md, "plan"): its induction steps reached 0.44 of the measured rate,
# its sampling and responses about 0.25.
TRAIN_EFFICIENCY = 0.4
EFFICIENCY = 0.25
ACTIVATION_BYTES = 24  # per token x layer x hidden unit kept for the backward pass in float32 (sdpa attention)
START_UP_S = {"cpu": 25.0, "cuda": 40.0}  # one `axolotl` process: imports, config, tokenizer, model load
JUDGE_PROMPT_TOKENS = 300  # the rubric around an instruction (judge.py)
SANDBOX_S = 0.5  # one execution-filter run in the sandbox (a fresh Python process)
EMBED_TOKENS = 128  # tokens embedded per text by the scorecard's MiniLM (22.7M parameters)
EMBEDDER_PARAMS = 22_700_000


@dataclass
class ModelShape:
    params: int
    layers: int
    hidden: int
    vocab: int
    kv_dim: int  # key (= value) width per layer: heads x head size, after grouped-query sharing


SHIPPED_CONFIGS = Path(__file__).parent / "model_configs"  # `<org>--<name>.json`: the models our example YAMLs name


def model_config(base_model: str, trust_remote_code: bool = False, shipped: bool = False) -> Any:
    """The model's config (local folder, Hub or its cache); with `shipped`, offline, also one we ship for the
    models our example YAMLs name, so a plan needs no Hub access for them."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    except OSError:
        copy = SHIPPED_CONFIGS / f"{base_model.replace('/', '--')}.json"
        if not (shipped and copy.is_file()):
            raise
        return AutoConfig.from_pretrained(str(copy))


def model_shape(base_model: str, trust_remote_code: bool = False) -> ModelShape:
    """The base model's size from its config: built on the meta device, so no weights are read or allocated."""
    from transformers import AutoModelForCausalLM

    config = model_config(base_model, trust_remote_code, shipped=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        kv_dim=kv_heads * head_dim,
    )


@dataclass
class Hardware:
    device: str  # "cpu" or "cuda"
    flops: float  # measured dense matmul FLOP/s in the dtype the stages use here
    dtype_bytes: int
    description: str


def measure_hardware(tflops: float | None = None) -> Hardware:
    """This machine's matmul rate (float32 on CPU, bf16 on a GPU), the fastest of repeats over 1.5 s.

    `tflops` plans for other hardware instead: an accelerator with that dense bf16 rate per process.
    """
    if tflops is not None:
        return Hardware("cuda", tflops * 1e12, 2, f"an accelerator at {tflops:g} TFLOP/s (given, bf16)")
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    n = 2048 if cuda else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a  # warm-up
    best, deadline = 0.0, time.perf_counter() + 1.5
    while time.perf_counter() < deadline:  # other load on the node slows some repeats, not the fastest
        start = time.perf_counter()
        a @ a
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    name = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads"
    return Hardware(device, best, 2 if cuda else 4, f"{name}: {best / 1e9:.0f} GFLOP/s measured ({str(dtype)[6:]} matmul)")


@dataclass
class StageEstimate:
    stage: str
    seconds: float
    peak_bytes: int
    basis: str  # the numbers that went into it, for the reader to check


def _seconds(flops: float, hw: Hardware, efficiency: float = EFFICIENCY) -> float:
    return flops / (hw.flops * efficiency)


def _zero_stage(deepspeed: Any) -> int:
    """0, or the ZeRO stage of a YAML's `deepspeed:` given as one of our shipped names (zero1/2/3)."""
    return int(deepspeed[-1]) if isinstance(deepspeed, str) and deepspeed in ("zero1", "zero2", "zero3") else 0


def estimate(
    domino: DominoConfig, sft: dict, shape: ModelShape, reference_tokens: list[int], hw: Hardware, world_size: int = 1
) -> list[StageEstimate]:
    """One estimate per stage the YAML runs (induction, synthesis, responses, filters, scorecard, SFT).

    `sft` holds the outer YAML's training keys; `reference_tokens` the token count of each reference (capped
    at `references.max_tokens`, plus EOS). Induction, generation and SFT split their work over `world_size`
    processes (data parallel); filters and the scorecard run on rank 0.
    """
    n_params, weights = shape.params, shape.params * hw.dtype_bytes
    ind, syn, rsp = domino.induction, domino.synthesis, domino.responses
    stages: list[StageEstimate] = []
    n = len(reference_tokens)
    mean_t = sum(reference_tokens) / n
    start_up = START_UP_S[hw.device]

    if domino.synthesis.adapter is None:
        k, l = ind.num_domain_tokens, (0 if ind.l1_only else ind.num_sample_tokens)
        mb = ind.micro_batch_size
        candidates = 1 if ind.l1_only or ind.contrastive_weight == 0 else (
            mb if ind.negatives == "in_batch" else 1 + ind.num_negatives)
        steps_per_epoch = math.ceil(n / (mb * ind.gradient_accumulation_steps))
        steps = ind.max_steps or math.ceil(steps_per_epoch * ind.num_epochs)
        micro_tokens = mb * (k + l) + mb * candidates * mean_t
        train = steps * ind.gradient_accumulation_steps * micro_tokens * 4 * n_params
        evals = (steps // ind.eval_steps + 1) if ind.eval_steps else 0
        r = min(ind.eval_references, n)
        per_eval = (r * r * mean_t + r * (k + l) + n * mean_t + ind.eval_samples * (k + syn.max_new_tokens)) * 2 * n_params
        peak = (weights + micro_tokens * shape.layers * shape.hidden * ACTIVATION_BYTES
                + min(micro_tokens, LOGIT_CHUNK_TOKENS) * shape.vocab * 4 * 3 + (k + n * l) * shape.hidden * 4 * 4)
        stages.append(StageEstimate(
            "induction", _seconds(train / world_size, hw, TRAIN_EFFICIENCY) + _seconds(evals * per_eval, hw) + start_up,
            int(peak),
            f"{steps} steps x {micro_tokens:.0f} tokens x 4N; {evals} evals",
        ))

    generated = syn.num_samples * (ind.num_domain_tokens + syn.max_new_tokens)
    batch = syn.batch_size or 32
    cache = batch * (ind.num_domain_tokens + syn.max_new_tokens) * shape.layers * 2 * shape.kv_dim * hw.dtype_bytes
    stages.append(StageEstimate(
        "synthesis", _seconds(generated * 2 * n_params / world_size, hw) + start_up, int(weights + cache),
        f"{syn.num_samples} samples x <= {syn.max_new_tokens} new tokens x 2N",
    ))
    if rsp.enabled:
        prompt = syn.max_new_tokens + 32  # the instruction and the chat template around it
        local = rsp.endpoint is None
        stages.append(StageEstimate(
            "responses", _seconds(syn.num_samples * (prompt + rsp.max_new_tokens) * 2 * n_params / world_size, hw)
            if local else 0.0,
            int(weights) if local else 0,
            f"{syn.num_samples} x <= {rsp.max_new_tokens} new tokens x 2N" if local else "on the endpoint's server",
        ))
    filters = domino.filters
    filter_s = 0.0
    if filters.execution.enabled:
        filter_s += syn.num_samples * SANDBOX_S / filters.execution.max_workers
    if filters.judge.enabled and filters.judge.endpoint is None:
        judged = 2 * syn.num_samples * (JUDGE_PROMPT_TOKENS + syn.max_new_tokens + filters.judge.max_new_tokens)
        filter_s += _seconds(judged * 2 * n_params, hw)
    stages.append(StageEstimate("filters", filter_s, 0, "sandbox runs and the judge's verdicts"))
    if domino.score.enabled:
        texts = syn.num_samples + n
        stages.append(StageEstimate(
            "scorecard", _seconds(texts * EMBED_TOKENS * 2 * EMBEDDER_PARAMS, hw) + 10.0, EMBEDDER_PARAMS * 4,
            f"{texts} texts embedded (MiniLM), plus its load",
        ))
    if sft:
        rows = syn.num_samples
        row_tokens = min(syn.max_new_tokens + (rsp.max_new_tokens if rsp.enabled else 0) + 16,
                         int(sft.get("sequence_len") or 2048))
        lora = sft.get("adapter") in ("lora", "qlora")
        per_token = 4 if lora else 6
        epochs = float(sft.get("num_epochs") or 1)
        batch_tokens = int(sft.get("micro_batch_size") or 1) * row_tokens
        activations = batch_tokens * shape.layers * shape.hidden * ACTIVATION_BYTES
        if sft.get("gradient_checkpointing"):
            activations //= shape.layers  # one layer's activations live at a time, plus the checkpoints
        # Full SFT: weights and gradients in the training dtype, float32 master copy and two Adam moments
        # (12 bytes a parameter); ZeRO-1/2/3 shard the optimizer state / + gradients / + weights over the ranks.
        zero, ranks = _zero_stage(sft.get("deepspeed")), world_size

        def share(size: float, from_stage: int) -> float:
            return size / ranks if zero >= from_stage else size

        states = weights if lora else share(weights, 3) + share(weights, 2) + share(n_params * 12, 1)
        peak = states + activations
        stages.append(StageEstimate(
            "sft", _seconds(rows * row_tokens * epochs * per_token * n_params / world_size, hw, TRAIN_EFFICIENCY) + start_up,
            int(peak),
            f"<= {rows} rows x <= {row_tokens} tokens x {epochs:g} epochs x {per_token}N"
            + (f", ZeRO-{zero} over {ranks}" if zero and not lora else ""),
        ))
    return stages
