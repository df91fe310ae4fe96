"""Plan-time estimates of each stage's time and peak memory, from the model's config and the YAML alone.

Never loads weights: the parameter count comes from the model built on the `meta` device. Each stage's time is
its units of work times the seconds one unit takes, plus a process start-up:

    induction   steps x micro-batches x one micro-batch of the DOMINO loss (forward + backward), + the evals
    generation  per batch: as many decode steps as its longest row at the step's fixed cost, + each row's tokens
                at the per-row cost (which grows with the cached context), + the prompts' forward pass
                (responses, judge); on the static loop every row stays for every step
    SFT         micro-batches x one SFT micro-batch (forward, backward, optimizer step), + evals of a val split

The seconds per unit come from `Speeds`: on this node, `MeasuredSpeeds` times the stages' own code on a slice of
the model (`probe.py`) in the dtype each stage uses here (bf16 or float32 on a CPU, as the run resolves it); for
other hardware (`--tflops`, `--bandwidth`), `NominalSpeeds` prices training by FLOPs (2N per token forward, 4N
forward + input gradients, 6N with weight gradients) and a decode step by the bytes it reads (weights + key/value
cache) over memory bandwidth, with the efficiencies each backend reached where this project measured it.

Lengths: samples from D* are expected to be as long as the references (D models them), UNFINISHED_SHARE of them
cut at `synthesis.max_new_tokens`; answers spread over ANSWER_SPREAD of `responses.max_new_tokens`; a verdict
ends after JUDGE_REPLY_TOKENS; a batch decodes as long as its longest row; every SFT row counts as kept (once
synthesis has run, its kept count). Peak memory is the largest single process: weights, plus for
induction the activations of one micro-batch, a logits chunk and D and S with gradient and two Adam moments; for
generation the key/value cache of one batch (docs/SCALING.md has the same terms at the paper's scale).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from axolotl_domino.args import DominoConfig, zero_stage
from axolotl_domino.cpu import cpu_bf16_units, cpu_trains_bf16, use_cpu_bf16
from axolotl_domino.hf import AUTO_BATCH_LIMIT, fitting_batch, free_memory, rank_device, static_decoding
from axolotl_domino.loss import LOGIT_CHUNK_TOKENS
from axolotl_domino.probe import PROBE_LAYERS, LoraSpec
from axolotl_domino.static_decode import STATIC_BATCH_LIMIT

# Nominal hardware (--tflops): the share of the dense matmul rate training steps reach (the quickstart's
# induction steps reached 44% of a CPU's measured float32 rate, bench/README.md), and of the memory-bandwidth
# bound a decode step reaches per decode loop: the dynamic HF loop's 13% measured on an H200 (issue 23: a 7B
# model at batch 64). The static loop's and vLLM's are assumptions until bench/gpu_throughput.py measures them on
# a GPU (the static loop's target is 50%; vLLM does not install beside this project's GPU stack).
TRAIN_EFFICIENCY = 0.4
DECODE_BANDWIDTH_EFFICIENCY = {"hf": 0.13, "hf-static": 0.5, "vllm": 0.5}
DEFAULT_BANDWIDTH_GBS = 3350.0  # an H100 SXM's HBM3, when --tflops comes without --bandwidth
ACTIVATION_BYTES = 24  # per token x layer x hidden unit kept for the backward pass in float32 (sdpa attention)
# Start-ups, measured on the quickstart (bench/README.md, timeline): a stage's own `axolotl` process (imports,
# config, tokenizer, model load; the GPU figure is a guess), a stage set up inside a running process (model load,
# tokenising), and the outer `axolotl train` before its first stage.
CHILD_START_S = {"cpu": 17.0, "cuda": 40.0}
SETUP_S = 6.0
OUTER_START_S = 13.0
# Answers end, evenly spread, between these shares of responses.max_new_tokens: on average at 65% (the
# quickstart's: 124 of 192 tokens, 13 of 62 at the cap).
ANSWER_SPREAD = (0.3, 1.0)
RESPONSE_FILL = sum(ANSWER_SPREAD) / 2
# Samples from D* that run to synthesis.max_new_tokens (a batch decodes as long as its longest row, so this share
# sets how many batches run to the cap): the paper-default run on 100 MBPP statements (10 epochs) cut 1 of 1,000,
# the quickstart's D (2 epochs) 2 of 64; at scale D is trained, and there the cost is.
UNFINISHED_SHARE = 0.002
JUDGE_PROMPT_TOKENS = 300  # the rubric around an instruction (judge.py)
JUDGE_REPLY_TOKENS = 48  # a JSON verdict with its one-sentence reason
CHAT_TOKENS = 16  # a chat template's turns around one instruction, when the tokenizer is not here to say
SANDBOX_S = 0.04  # one execution-filter run in the sandbox, per worker (quickstart: 44 answers in 0.8 s on 2)
SCORECARD_S = 1.0  # the scorecard's embedder load, plots and tests (quickstart: 1.8 s with 164 texts)
EMBED_S_PER_TEXT = 0.005  # MiniLM on a CPU core pair
LOAD_BYTES_PER_S = 1e9  # loading a model's weights inside a running process (the in-process synthesis)
# Induction under ZeRO-3: each rank keeps 1/N of the weights plus the layers being gathered (the one in use and the
# one prefetched), and every pass of the model over a step's sequences gathers all of them again: the loss runs the
# model twice for L1 (D, then the references on its cache) and twice more for L2, forward and backward. The
# all-gather's rate per GPU is an assumption (NVLink nodes reach several times this; PCIe or a network far less).
ZERO3_LIVE_LAYERS = 2
ALLGATHER_BYTES_PER_S = 100e9


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


def model_shape(config: Any, trust_remote_code: bool = False) -> ModelShape:
    """The model's size from its config: built on the meta device, so no weights are read or allocated."""
    from transformers import AutoModelForCausalLM

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


# --- seconds per unit of work ------------------------------------------------------------------------------


class Speeds(Protocol):
    """Seconds of one unit of each stage's work, for the whole model, on one process."""

    device: str  # "cpu" or "cuda"
    description: str

    def induction_step(self, k: int, l: int, anchors: int, extra_rows: int, length: int, length_normalized: bool) -> float: ...
    def decode_step(self, batch: int, context: int, temperature: float, backend: str = "hf") -> float: ...
    def forward(self, rows: int, length: int, every_position: bool = False, prefix: int = 1) -> float: ...
    def sft_step(self, rows: int, length: int, lora: LoraSpec | None, checkpointing: bool) -> float: ...


@dataclass
class Precision:
    """The dtypes the stages use: training (induction, SFT) under bf16 autocast or not, inference weights."""

    train_bf16: bool
    infer_bf16: bool

    @classmethod
    def of(cls, config: dict, device: str) -> Precision:
        """As `axolotl train` resolves `config` (the raw YAML) on this node's device."""
        if device == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            return cls(train_bf16=bf16 and config.get("bf16") in (True, "auto", None), infer_bf16=bf16)
        units = cpu_bf16_units()
        domino = config.get("domino") or {}
        return cls(train_bf16=cpu_trains_bf16(config, units), infer_bf16=use_cpu_bf16(domino.get("cpu_bf16", "auto"), units))


class MeasuredSpeeds:
    """This node's speeds, timed on a slice of the model (`probe.Probe`), once per shape asked."""

    def __init__(self, config: Any, precision: Precision, shape: ModelShape):
        self.config, self.precision, self.shape = config, precision, shape
        self.device = rank_device().type
        self.bandwidth = _copy_bandwidth(rank_device())
        train = "bf16 autocast" if precision.train_bf16 else "float32"
        infer = "bf16" if precision.infer_bf16 else "float32"
        self.description = (f"{_device_name()}: stages timed on a {min(PROBE_LAYERS, shape.layers)}-layer slice of the model "
                            f"(training in {train}, inference in {infer}); {matmul_rates()}")

    @cached_property
    def _train(self):
        from axolotl_domino.probe import Probe

        bf16 = self.precision.train_bf16
        # Axolotl loads the frozen weights in bf16 and trains under autocast; eager attention on a CPU (cpu.py).
        return Probe(self.config, rank_device(), torch.bfloat16 if bf16 else torch.float32, autocast=bf16,
                     attention="eager" if bf16 and self.device == "cpu" else None)

    @cached_property
    def _infer(self):
        from axolotl_domino.probe import Probe

        bf16 = self.precision.infer_bf16
        return Probe(self.config, rank_device(), torch.bfloat16 if bf16 else torch.float32,
                     attention="eager" if bf16 and self.device == "cpu" else None)  # hf.load_model's choice

    @cache
    def induction_step(self, k, l, anchors, extra_rows, length, length_normalized) -> float:
        return self._train.induction_step(k, l, anchors, extra_rows, length, length_normalized)

    @cache
    def decode_step(self, batch, context, temperature, backend="hf") -> float:
        if backend == "vllm" or (backend == "hf-static" and self.device == "cuda"):
            # Not timed here (vLLM; the static loop compiled into CUDA graphs): the bytes it reads, as on other hardware.
            # On a CPU the static loop runs eagerly, near the dynamic loop the probe times.
            return _bandwidth_step(self.shape, batch, context, 2 if self.precision.infer_bf16 else 4, self.bandwidth,
                                   DECODE_BANDWIDTH_EFFICIENCY[backend])
        return self._infer.decode_step(batch, context, temperature)

    @cache
    def forward(self, rows, length, every_position=False, prefix=1) -> float:
        probed_rows, probed_length, scale = _probe_shape(rows, length)
        return self._infer.forward(probed_rows, probed_length, every_position, prefix) * scale

    @cache
    def sft_step(self, rows, length, lora, checkpointing) -> float:
        probed_rows, probed_length, scale = _probe_shape(rows, length)
        return self._train.sft_step(probed_rows, probed_length, lora, checkpointing) * scale


# A forward or SFT micro-batch of more tokens is timed at this many and scaled by its tokens, so the plan stays
# seconds long (a packed 2 x 2048 SFT micro-batch took 50 s to time on a 3-layer slice on 2 CPU cores).
PROBE_TOKENS = 1024


def _probe_shape(rows: int, length: int) -> tuple[int, int, float]:
    """(rows, length) to time for a micro-batch of `rows` x `length` tokens, and the factor to scale it by."""
    if rows * length <= PROBE_TOKENS:
        return rows, length, 1.0
    probed_length = min(length, PROBE_TOKENS)
    probed_rows = max(1, PROBE_TOKENS // probed_length)
    return probed_rows, probed_length, rows * length / (probed_rows * probed_length)


@dataclass
class NominalSpeeds:
    """Other hardware, from its dense bf16 rate and memory bandwidth per process (nothing is timed)."""

    shape: ModelShape
    tflops: float
    bandwidth_gbs: float = DEFAULT_BANDWIDTH_GBS
    device: str = "cuda"
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.description = (f"an accelerator at {self.tflops:g} TFLOP/s (bf16) and {self.bandwidth_gbs:g} GB/s (given); "
                            f"training at {TRAIN_EFFICIENCY:.0%} of the rate, decoding at "
                            + ", ".join(f"{b} {e:.0%}" for b, e in DECODE_BANDWIDTH_EFFICIENCY.items())
                            + " of the bandwidth bound")

    def _train_s(self, tokens: float, flops_per_token: int) -> float:
        return tokens * flops_per_token * self.shape.params / (self.tflops * 1e12 * TRAIN_EFFICIENCY)

    def induction_step(self, k, l, anchors, extra_rows, length, length_normalized) -> float:
        """D once, each anchor under D (L1), each S_i on D's cache, each anchor's candidates under [D; S_i] (L2)."""
        candidates = (extra_rows // anchors + 1 if extra_rows else anchors) if l else 0
        return self._train_s(k + anchors * length + anchors * l + anchors * candidates * length, 4)

    def decode_step(self, batch, context, temperature, backend="hf") -> float:
        return _bandwidth_step(self.shape, batch, context, 2, self.bandwidth_gbs * 1e9, DECODE_BANDWIDTH_EFFICIENCY[backend])

    def forward(self, rows, length, every_position=False, prefix=1) -> float:
        return self._train_s(rows * length + prefix, 2)

    def sft_step(self, rows, length, lora, checkpointing) -> float:
        return self._train_s(rows * length, (4 if lora is not None else 6) + (2 if checkpointing else 0))


def _bandwidth_step(shape: ModelShape, batch: int, context: int, dtype_bytes: int, bandwidth: float, efficiency: float) -> float:
    """A decode step priced by what it reads: every weight once, and each row's key/value cache."""
    cache = batch * context * shape.layers * 2 * shape.kv_dim * dtype_bytes
    return (shape.params * dtype_bytes + cache) / (bandwidth * efficiency)


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes per second a large copy moves on `device` (read + write), the fastest of a few."""
    x = torch.empty(64 * 2**20, device=device)  # 256 MiB
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        y.copy_(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * x.numel() * x.element_size() / best


def _device_name() -> str:
    device = rank_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    units = cpu_bf16_units()
    return f"CPU, {torch.get_num_threads()} threads" + (f" ({', '.join(units)})" if units else ", no bf16 units")


def matmul_rates(seconds: float = 0.5) -> str:
    """This node's dense matmul rate in float32 and bf16 (the fastest of repeats), for the record: the estimates
    come from the stages' own code, since the two rates alone do not say how fast a stage runs."""
    device = rank_device()
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        n = 2048
        a = torch.randn(n, n, device=device, dtype=dtype)
        a @ a
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            a @ a
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
        rates.append(f"{str(dtype)[6:]} {best / 1e9:,.0f}")
    return "matmul GFLOP/s " + ", ".join(rates)


# --- the stages ----------------------------------------------------------------------------------------------


@dataclass
class StageEstimate:
    stage: str
    seconds: float
    peak_bytes: int
    basis: str  # the numbers that went into it, for the reader to check


@dataclass
class RunFacts:
    """What the estimates need beyond the YAML: token counts the planner reads with the tokenizer."""

    reference_tokens: list[int]  # each reference's tokens (capped at references.max_tokens, plus EOS)
    chat_tokens: int = CHAT_TOKENS  # the responder's chat template (and system prompt) around an instruction
    row_tokens: int = CHAT_TOKENS  # what the dataset's Axolotl type adds around one synthetic SFT row (`_format_tokens`)
    dataset_tokens: list[int] = field(default_factory=list)  # rows of the YAML's own local datasets
    kept: int | None = None  # synthetic rows SFT trains on, once synthesis has run (else num_samples)
    config: Any = None  # the model's config and the bytes free for its batches, for the automatic batch sizes
    free_bytes: int | None = None  # (either None: AUTO_BATCH_LIMIT sequences a batch)


def expected_longest(lengths: list[int], group: int, multiple: int = 1, draws: int = 256) -> float:
    """The mean length of a group of `group` rows drawn at random from `lengths` (with replacement), padded to its
    longest row rounded up to `multiple` (fixed draws, so a plan is the same every time)."""
    rng = np.random.default_rng(0)
    picks = rng.choice(np.asarray(lengths), size=(draws, max(1, group)), replace=True).max(axis=1)
    return float(np.mean(multiple * np.ceil(picks / multiple)))


def sample_lengths(domino: DominoConfig, reference_tokens: list[int]) -> list[int]:
    """The lengths samples from D* that end are expected to have: the references' (D models them), within the cap
    (UNFINISHED_SHARE more run to the cap: `generation_seconds`'s `cut_share`)."""
    return [min(domino.synthesis.max_new_tokens, t) for t in reference_tokens]


def answer_lengths(cap: int, rows: int = 100) -> list[int]:
    """Answers' lengths, spread evenly over ANSWER_SPREAD of their cap."""
    low, high = ANSWER_SPREAD
    return [round(cap * (low + (high - low) * (i + 0.5) / rows)) for i in range(rows)]


def generation_seconds(speeds: Speeds, rows: int, batch: int, context: int, cap: int, lengths: list[int],
                       temperature: float, prompt: int = 0, backend: str = "hf", cut_share: float = 0.0) -> float:
    """`rows` sequences of `lengths` (a distribution, each <= `cap`; a further `cut_share` of them run to `cap`)
    decoded `batch` at a time after `context` cached tokens (a shared prefix, or each row's own prompt of `prompt`
    tokens run first).

    A step costs t(b, c) = fixed + b x (row + c x per_context), from timed steps at (batch, context), (1, context)
    and (batch, context + cap). A batch runs as long as its longest row: on the dynamic loop each row costs its own
    tokens and the batch the fixed cost of every step; on the static loop every row stays to the end."""
    if rows <= 0:
        return 0.0
    b = min(batch, rows)
    single, full = speeds.decode_step(1, context, temperature, backend), speeds.decode_step(b, context, temperature, backend)
    longer = speeds.decode_step(b, context + cap, temperature, backend)
    row = max(full - single, 0.0) / max(b - 1, 1)
    per_context = max(longer - full, 0.0) / (b * cap)
    fixed = max(single - row, 0.0)
    batches = math.ceil(rows / b)
    any_cut = 1 - (1 - cut_share) ** b
    steps = any_cut * cap + (1 - any_cut) * min(cap, expected_longest(lengths, b))  # each batch: until its longest row ends
    mean = (1 - cut_share) * sum(lengths) / len(lengths) + cut_share * cap
    if backend == "hf-static":  # every row decodes every step, the ends read every 16 steps
        steps = min(cap, 16 * math.ceil(steps / 16))
        seconds = batches * steps * (fixed + b * (row + per_context * steps / 2))
    else:
        seconds = batches * steps * fixed + rows * mean * (row + per_context * mean / 2)  # `row` is at `context`
    if prompt:
        seconds += batches * speeds.forward(b, prompt)
    return seconds


STAGES = ("induction", "synthesis", "responses", "filters", "scorecard", "sft")


def estimate(domino: DominoConfig, sft: dict, shape: ModelShape, facts: RunFacts, speeds: Speeds,
             world_size: int = 1, dtype_bytes: int = 2, only: set[str] | None = None) -> list[StageEstimate]:
    """One estimate per stage the YAML runs (of STAGES; only those in `only` when given: a measured speed is
    timed only for the stages asked).

    `sft` holds the outer YAML's training keys. Induction, generation and SFT split their work over `world_size`
    processes (data parallel); filters and the scorecard run on rank 0. `dtype_bytes`: of the inference weights."""
    estimates = _estimate(domino, sft, shape, facts, speeds, world_size, dtype_bytes, set(STAGES) if only is None else only)
    return [stage for stage in estimates if stage is not None]


def _estimate(domino, sft, shape, facts, speeds, world_size, dtype_bytes, only) -> list[StageEstimate | None]:
    ind, syn, rsp = domino.induction, domino.synthesis, domino.responses
    weights = shape.params * dtype_bytes
    stages: list[StageEstimate | None] = []
    n = len(facts.reference_tokens)
    mean_t = sum(facts.reference_tokens) / n
    child_start = CHILD_START_S[speeds.device]
    in_process = speeds.device == "cpu" and world_size == 1 and syn.backend == "hf"  # pipeline.in_process
    backend = syn.backend if syn.backend == "vllm" else "hf-static" if static_decoding(syn.decode, torch.device(
        speeds.device)) else "hf"  # the decode loop each batch runs on
    samples = sample_lengths(domino, facts.reference_tokens)
    sample_tokens = (1 - UNFINISHED_SHARE) * sum(samples) / len(samples) + UNFINISHED_SHARE * syn.max_new_tokens

    def batch_size(given: int | None, prefix: int, new: int, prefill: bool = False) -> int:
        """As the generators choose it: given, or what fits in half the free memory up to the loop's limit."""
        static = backend == "hf-static"
        limit = STATIC_BATCH_LIMIT if static else AUTO_BATCH_LIMIT
        if given:
            return given
        if facts.free_bytes is None or facts.config is None:
            return limit
        return fitting_batch(facts.config, dtype_bytes, facts.free_bytes, prefix, new, limit, prefill, static)

    k = ind.num_domain_tokens
    if domino.synthesis.adapter is None and "induction" in only:
        l = 0 if ind.l1_only else ind.num_sample_tokens
        mb = ind.micro_batch_size
        extra = mb * ind.num_negatives if l and ind.contrastive_weight and ind.negatives == "sampled" else 0
        steps_per_epoch = math.ceil(n / (mb * ind.gradient_accumulation_steps * world_size))
        steps = ind.max_steps or math.ceil(steps_per_epoch * ind.num_epochs)
        padded = round(expected_longest(facts.reference_tokens, mb + extra))  # references pad to the micro-batch's longest
        step_s = speeds.induction_step(k, l, mb, extra, padded, ind.likelihood == "length_normalized")
        zero3 = zero_stage(ind.axolotl.get("deepspeed")) == 3
        evals = (steps // ind.eval_steps + (steps % ind.eval_steps > 0)) if ind.eval_steps and not zero3 else 0  # skipped
        r = min(ind.eval_references, n)
        per_eval = (
            generation_seconds(speeds, ind.eval_samples, min(ind.eval_samples, syn.batch_size or ind.eval_samples), k,
                               syn.max_new_tokens, samples, syn.temperature, backend="hf" if backend == "vllm" else backend,
                               cut_share=UNFINISHED_SHARE)
            + (r if l else 0) * speeds.forward(r, round(mean_t), every_position=True, prefix=k + l)  # retrieval: r x r
            + speeds.forward(r, round(mean_t), every_position=True, prefix=k)  # reference NLL under D
        ) if evals else 0.0
        micro_tokens = mb * (k + l) + (mb + extra) * mean_t
        trainable = (k + n * l) * shape.hidden * 4 * 4  # D and S: float32 parameter, gradient, two Adam moments
        resident, sharding = weights, ""
        if zero3 and world_size > 1:
            # A rank holds its shard of everything, the layers being gathered, and D and S whole while they are used.
            resident = weights / world_size + ZERO3_LIVE_LAYERS * weights / shape.layers
            trainable = trainable / world_size + (k + n * l) * shape.hidden * dtype_bytes * 2
            gather_s = (4 if l else 2) * 2 * weights * (world_size - 1) / world_size / ALLGATHER_BYTES_PER_S
            step_s += gather_s
            sharding = (f"; ZeRO-3 over {world_size}: {_s(gather_s)} a micro-batch gathering weights at an assumed "
                        f"{ALLGATHER_BYTES_PER_S / 1e9:.0f} GB/s")
        train = steps * ind.gradient_accumulation_steps * step_s
        peak = (resident + micro_tokens * shape.layers * shape.hidden * ACTIVATION_BYTES
                + min(micro_tokens, LOGIT_CHUNK_TOKENS) * shape.vocab * 4 * 3 + trainable)
        stages.append(StageEstimate(
            "induction", train + evals * per_eval + child_start, int(peak),
            f"{steps} steps x {_s(step_s)} a micro-batch of {mb} (+{extra} negatives) x {padded} tokens; "
            f"{evals} evals x {_s(per_eval)}{sharding}",
        ))

    batch = batch_size(syn.batch_size, k, syn.max_new_tokens)
    sampling = 0.0 if "synthesis" not in only else generation_seconds(
        speeds, math.ceil(syn.num_samples / world_size), batch, k, syn.max_new_tokens, samples, syn.temperature,
        backend=backend, cut_share=UNFINISHED_SHARE)
    cache = min(batch, syn.num_samples) * (k + syn.max_new_tokens) * shape.layers * 2 * shape.kv_dim * dtype_bytes
    stages.append(None if "synthesis" not in only else StageEstimate(
        "synthesis", sampling + (1 + weights / LOAD_BYTES_PER_S if in_process else child_start), int(weights + cache),
        f"{syn.num_samples} samples of ~{sample_tokens:.0f} (<= {syn.max_new_tokens}; {UNFINISHED_SHARE:.1%} assumed "
        f"cut there) tokens, batches of {batch}",
    ))
    answer_tokens = rsp.max_new_tokens * RESPONSE_FILL if rsp.enabled else 0.0
    if rsp.enabled and "responses" in only:
        local = rsp.endpoint is None
        prompt = round(facts.chat_tokens + sample_tokens)
        answer_batch = batch_size(rsp.batch_size, prompt, rsp.max_new_tokens, prefill=True)
        seconds = generation_seconds(speeds, math.ceil(syn.num_samples / world_size), answer_batch, prompt,
                                     rsp.max_new_tokens, answer_lengths(rsp.max_new_tokens), rsp.temperature, prompt=prompt,
                                     backend=backend) if local else 0.0
        stages.append(StageEstimate(
            "responses", seconds, int(weights) if local else 0,
            f"{syn.num_samples} answers of ~{answer_tokens:.0f} (<= {rsp.max_new_tokens}) tokens, batches of "
            f"{answer_batch}" if local else "on the endpoint's server",
        ))
    filters = domino.filters
    filter_s = 0.0
    if filters.execution.enabled:
        filter_s += syn.num_samples * SANDBOX_S / filters.execution.max_workers
    if filters.judge.enabled and filters.judge.endpoint is None and "filters" in only:
        judge = filters.judge
        prompt = round(JUDGE_PROMPT_TOKENS + sample_tokens + answer_tokens)
        verdict_batch = batch_size(judge.batch_size, prompt, judge.max_new_tokens, prefill=True)
        filter_s += (1 + rsp.enabled) * generation_seconds(
            speeds, syn.num_samples, verdict_batch, prompt, judge.max_new_tokens,
            [min(JUDGE_REPLY_TOKENS, judge.max_new_tokens)], 0.0, prompt=prompt, backend=backend)
    stages.append(StageEstimate("filters", filter_s, 0, "sandbox runs and the judge's verdicts") if "filters" in only else None)
    if domino.score.enabled and "scorecard" in only:
        texts = syn.num_samples + n
        stages.append(StageEstimate("scorecard", SCORECARD_S + texts * EMBED_S_PER_TEXT, 23_000_000 * 4,
                                    f"{texts} texts embedded (MiniLM), plus its load"))
    if sft and "sft" in only:
        stages.append(_sft_estimate(sft, shape, facts, speeds, world_size, domino))
    return stages


def _sft_estimate(sft: dict, shape: ModelShape, facts: RunFacts, speeds: Speeds, world_size: int,
                  domino: DominoConfig) -> StageEstimate:
    """Axolotl's SFT on the synthetic rows (and the YAML's own local datasets): micro-batches x one micro-batch.

    A synthetic row is the chat template, a sample as long as a reference, and an answer (spread over
    ANSWER_SPREAD of its cap); without packing a micro-batch pads to its longest row (rounded up to Axolotl's
    multiple of 64 unless `pad_to_sequence_len: false`), with packing it holds `sequence_len` tokens."""
    rows = facts.kept if facts.kept is not None else domino.synthesis.num_samples
    seq_len = int(sft.get("sequence_len") or 2048)
    lengths = [min(seq_len, t) for t in _synthetic_rows(domino, facts, rows) + facts.dataset_tokens]
    val = sft.get("val_set_size") or 0
    held = round(len(lengths) * val) if 0 < val < 1 else int(val)
    train_rows, tokens = len(lengths) - held, sum(lengths)
    mb = int(sft.get("micro_batch_size") or 1)
    epochs = float(sft.get("num_epochs") or 1)
    if sft.get("sample_packing"):
        # Axolotl packs into bins of micro_batch_size x sequence_len and sets max_steps to whole optimizer steps.
        bins = math.ceil(tokens * train_rows / max(len(lengths), 1) / (mb * seq_len))
        accumulation = int(sft.get("gradient_accumulation_steps") or 1)
        micro_batches, length = max(1, bins // accumulation) * accumulation, seq_len
    else:
        micro_batches = math.ceil(train_rows / mb)
        pad = sft.get("pad_to_sequence_len")
        multiple = 1 if pad is False else int(sft.get("pad_to_multiple_of") or 64)
        length = seq_len if pad else min(seq_len, round(expected_longest(lengths, mb, multiple)))
    lora = _lora_spec(sft)
    step_s = speeds.sft_step(mb, length, lora, bool(sft.get("gradient_checkpointing")))
    train = math.ceil(micro_batches / world_size) * epochs * step_s
    evals = int(sft.get("evals_per_epoch") or 1) * math.ceil(epochs) if held else 0
    held_tokens = tokens * held / max(len(lengths), 1)
    eval_batches = math.ceil(held_tokens / (mb * seq_len)) if sft.get("eval_sample_packing", sft.get("sample_packing")) \
        else math.ceil(held / mb)
    eval_s = evals * eval_batches * speeds.forward(mb, length)
    activations = mb * length * shape.layers * shape.hidden * ACTIVATION_BYTES
    if sft.get("gradient_checkpointing"):
        activations //= shape.layers  # one layer's activations live at a time, plus the checkpoints
    weights = shape.params * 2
    # Full SFT: weights and gradients in the training dtype, float32 master copy and two Adam moments
    # (12 bytes a parameter); ZeRO-1/2/3 shard the optimizer state / + gradients / + weights over the ranks.
    zero = zero_stage(sft.get("deepspeed"))

    def share(size: float, from_stage: int) -> float:
        return size / world_size if zero >= from_stage else size

    states = weights if lora else share(weights, 3) + share(weights, 2) + share(shape.params * 12, 1)
    return StageEstimate(
        "sft", train + eval_s + SETUP_S, int(states + activations),
        f"{micro_batches} micro-batches of {mb} x {length} tokens x {epochs:g} epochs x {_s(step_s)}"
        + (f"; {evals} evals of {held} rows" if evals else "")
        + (f", ZeRO-{zero} over {world_size}" if zero and not lora else ""),
    )


def _synthetic_rows(domino: DominoConfig, facts: RunFacts, rows: int) -> list[int]:
    """Token counts of `rows` synthetic SFT rows: what the dataset type adds, a sample (`sample_lengths` in turn)
    and its answer (`answer_lengths`, in a scattered order)."""
    samples = sample_lengths(domino, facts.reference_tokens)
    answers = answer_lengths(domino.responses.max_new_tokens, rows) if domino.responses.enabled else [0] * rows
    return [facts.row_tokens + samples[i % len(samples)] + answers[(i * 7919) % rows] for i in range(rows)]


def _lora_spec(sft: dict) -> LoraSpec | None:
    if sft.get("adapter") not in ("lora", "qlora"):
        return None
    targets = sft.get("lora_target_modules")
    target = tuple(targets) if isinstance(targets, list) and not sft.get("lora_target_linear") else "all-linear"
    r = int(sft.get("lora_r") or 8)
    return LoraSpec(r=r, alpha=float(sft.get("lora_alpha") or 2 * r), dropout=float(sft.get("lora_dropout") or 0.0),
                    target_modules=target)


def _s(seconds: float) -> str:
    return f"{seconds:.3g} s"


# --- the plan of one YAML --------------------------------------------------------------------------------------


@dataclass
class Plan:
    shape: ModelShape
    hardware: str
    facts: RunFacts
    stages: list[StageEstimate]
    notes: list[str]
    speeds: Speeds
    inputs: tuple[DominoConfig, dict, int]  # the domino block, the raw YAML, the world size
    seconds: float  # what making the plan took (the pipeline spends it too, before its first stage)

    @property
    def by_stage(self) -> dict[str, StageEstimate]:
        return {stage.stage: stage for stage in self.stages}

    def sft_with(self, kept: int) -> StageEstimate:
        """The SFT estimate once synthesis has said how many rows it kept."""
        domino, config, world_size = self.inputs
        facts = RunFacts(**{**vars(self.facts), "kept": kept})
        (sft,) = estimate(domino, config, self.shape, facts, self.speeds, world_size, only={"sft"})
        return sft


def duration(seconds: float | None) -> str:
    """A time as people read it: 45s, 14m05s, 3.1 h, 2.5 days."""
    if seconds is None:
        return "-"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def plan_run(domino: DominoConfig, base_model: str, config: dict, texts: list[str], world_size: int = 1,
             tflops: float | None = None, bandwidth_gbs: float | None = None, kept: int | None = None,
             only: set[str] | None = None) -> Plan:
    """The estimates of `axolotl domino plan` (and of the pipeline's log line at each stage): for this node,
    timed on a slice of the model, or for hardware given by `tflops` (and `bandwidth_gbs`).

    `config` is the raw YAML, `texts` the references, `kept` the synthetic rows once synthesis has run."""
    started = time.perf_counter()
    trust = bool(config.get("trust_remote_code"))
    model = model_config(base_model, trust, shipped=True)
    shape = model_shape(model, trust)
    notes: list[str] = []
    tokenizer = _tokenizer(base_model, trust, notes)
    facts = RunFacts(
        reference_tokens=_token_counts(tokenizer, texts, domino.references.max_tokens),
        chat_tokens=_chat_tokens(tokenizer, [{"role": "system", "content": domino.responses.system_prompt}]
                                 if domino.responses.system_prompt else []),
        row_tokens=_format_tokens(tokenizer, domino.dataset.format),
        dataset_tokens=_dataset_tokens(tokenizer, config.get("datasets") or [], notes),
        kept=kept,
        config=model,
    )
    if tflops is not None:
        speeds: Speeds = NominalSpeeds(shape, tflops, bandwidth_gbs or DEFAULT_BANDWIDTH_GBS)
        dtype_bytes = 2
    else:
        precision = Precision.of(config, rank_device().type)
        speeds = MeasuredSpeeds(model, precision, shape)
        dtype_bytes = 2 if precision.infer_bf16 else 4
        facts.free_bytes = free_memory(rank_device())
    stages = estimate(domino, config, shape, facts, speeds, world_size, dtype_bytes, only)
    return Plan(shape, speeds.description, facts, stages, notes, speeds, (domino, config, world_size),
                time.perf_counter() - started)


def _tokenizer(base_model: str, trust: bool, notes: list[str]) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust)
    except OSError:
        notes.append(f"{base_model}'s tokenizer is not available here: texts counted at 4 characters a token")
        return None


def _count(tokenizer: Any, texts: list[str]) -> list[int]:
    if tokenizer is None:
        return [len(text) // 4 + 1 for text in texts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _token_counts(tokenizer: Any, texts: list[str], cap: int) -> list[int]:
    """Each reference's token count (capped, plus EOS)."""
    return [min(count, cap) + 1 for count in _count(tokenizer, texts)]


def _chat_tokens(tokenizer: Any, turns: list[dict[str, str]]) -> int:
    """The tokens a chat template puts around one instruction (as a user turn, with `turns` before or after it)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return CHAT_TOKENS
    system = [turn for turn in turns if turn["role"] == "system"]
    after = [turn for turn in turns if turn["role"] != "system"]
    conversation = system + [{"role": "user", "content": ""}] + after
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=not after, tokenize=True, return_dict=True)
    return len(ids["input_ids"]) + 1  # and the turn's end after the text


# Axolotl's alpaca prompt around an instruction without input (prompt_strategies/alpaca_*: the "alpaca" style).
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n\n\n### Response:\n")


def _format_tokens(tokenizer: Any, format: str | None) -> int:
    """What an Axolotl dataset type adds to a row's text: `completion` an EOS, `alpaca` its prompt, `chat_template`
    the turns of the tokenizer's template (with any system prompt it adds by default) around a user turn and an
    answer."""
    if format == "completion":
        return 1
    if format == "alpaca":
        return _count(tokenizer, [ALPACA_PROMPT])[0] + 1
    return _chat_tokens(tokenizer, [{"role": "assistant", "content": ""}])


DATASET_SAMPLE_ROWS = 2000  # rows of a local dataset tokenised for the SFT estimate; larger ones are extrapolated


def _dataset_tokens(tokenizer: Any, datasets: list, notes: list[str]) -> list[int]:
    """Token counts of the rows of the YAML's own local JSON / JSON Lines datasets (their string values): the
    first DATASET_SAMPLE_ROWS rows counted, repeated to the file's row count."""
    counts = []
    for entry in datasets:
        path = Path(str((entry or {}).get("path", "")))
        if str(path).startswith("domino:"):
            continue
        if not path.is_file() or path.suffix not in (".json", ".jsonl"):
            notes.append(f"datasets: {path} is not a local JSON file; its rows are not in the SFT estimate")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rows = json.loads(text) if path.suffix == ".json" else [line for line in text.splitlines() if line.strip()]
        sample = [json.loads(row) if isinstance(row, str) else row for row in rows[:DATASET_SAMPLE_ROWS]]
        around = _format_tokens(tokenizer, (entry or {}).get("type"))
        sampled = [around + count for count in
                   _count(tokenizer, [" ".join(str(v) for v in row.values() if isinstance(v, str)) for row in sample])]
        counts += (sampled * math.ceil(len(rows) / max(len(sampled), 1)))[: len(rows)]
    return counts
