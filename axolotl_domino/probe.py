"""How fast this node runs the stages' own code for one model, timed on a slice of that model.

The plan cannot run a stage to time it, and FLOPs over a matmul rate misprice the stages whose time is not
in large matmuls. On a CPU with AMX, bf16 matmuls run at 7x float32's rate, yet the quickstart's induction
steps (small matmuls, many small operations) are barely faster in bf16 than float32's FLOPs would say, and
the paper-default induction of the same model is 5x faster than float32's. A decode step of a small model is
mostly everything but its matmuls. So the planner times the code each stage runs, at the stage's shapes:
the DOMINO loss on one micro-batch (`loss.domino_loss`, forward and backward), the decode loop
(`hf.decode`), a forward pass over prompts, and an SFT micro-batch (forward, backward, optimizer step). It
runs them on the base model built from its config with only its first decoder layers (random weights, the
stages' dtype, attention and autocast), with one layer and with `PROBE_LAYERS`, and extrapolates
linearly in layers:

    t(L layers) = t(1) + (L - 1) * (t(PROBE_LAYERS) - t(1)) / (PROBE_LAYERS - 1)

The intercept holds what does not repeat per layer: embeddings, the output head and the loss over the
vocabulary, sampling, Python. Each is the fastest of `REPEATS` runs after a warm-up: load from other work on the
node slows some runs, not the fastest. No weights are read and nothing is written.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

from axolotl_domino.hf import decode, last_logits, row_seeds, warpers
from axolotl_domino.loss import domino_loss, prefix_logprobs

PROBE_LAYERS = 4
REPEATS = 3
DECODE_STEPS = 4  # decode steps per timed run


@dataclass(frozen=True)
class LoraSpec:
    """The YAML's LoRA settings, which the SFT probe trains with (on a CPU, LoRA dropout alone is a fifth of a step)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = "all-linear"


class Probe:
    """The base model cut to its first layers, with the stages' code timed on it (seconds for the whole model).

    `dtype`: of the weights; `autocast`: training runs under bf16 autocast (Axolotl's `bf16: true`);
    `attention`: the attention implementation the stages use on this device."""

    def __init__(self, config, device: torch.device, dtype: torch.dtype, autocast: bool = False,
                 attention: str | None = None):
        config = copy.deepcopy(config)
        self.text = config.get_text_config()
        self.layers = self.text.num_hidden_layers
        self.device, self.dtype, self.autocast = device, dtype, autocast
        self.probe_layers = min(PROBE_LAYERS, self.layers)
        self.text.num_hidden_layers = self.probe_layers
        if isinstance(getattr(self.text, "layer_types", None), list):
            self.text.layer_types = self.text.layer_types[: self.probe_layers]
        kwargs = {"attn_implementation": attention} if attention else {}
        self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs).to(device).eval()
        self.model.requires_grad_(False)
        self.vocab, self.hidden = self.text.vocab_size, self.text.hidden_size
        self._trainable: dict[tuple[LoraSpec | None, bool], PreTrainedModel] = {}

    def _time(self, prepare: Callable[[PreTrainedModel], Callable[[], object]], model: PreTrainedModel | None = None) -> float:
        """Seconds of the thunk `prepare(model)` returns, for the whole model: the fastest of REPEATS runs (after a
        warm-up) with 1 layer and with PROBE_LAYERS, extrapolated in layers. Each layer count runs its repeats in a
        row: alternating them made every run allocate afresh, and fresh pages cost this VM 0.24 s a GiB, which
        doubled a decode step's time."""
        model = model or self.model
        counts = sorted({1, self.probe_layers})
        seconds = [min([self._run(prepare, model, layers) for _ in range(REPEATS + 1)][1:]) for layers in counts]
        _use_layers(model, self.probe_layers)
        if len(seconds) == 1:
            return seconds[0]
        per_layer = (seconds[1] - seconds[0]) / (self.probe_layers - 1)
        if per_layer <= 0:  # noise swamped the layers' share: every layer at the slice's average, an upper bound
            per_layer = seconds[1] / self.probe_layers
        return seconds[0] + (self.layers - 1) * per_layer

    def _run(self, prepare: Callable[[PreTrainedModel], Callable[[], object]], model: PreTrainedModel, layers: int) -> float:
        """Seconds of one run of `model` cut to `layers` layers."""
        _use_layers(model, layers)
        run = prepare(model)
        self._sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext():
            run()
        self._sync()
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _ids(self, rows: int, length: int) -> Tensor:
        return torch.randint(self.vocab, (rows, max(length, 1)), device=self.device)

    def induction_step(self, k: int, l: int, anchors: int, extra_rows: int, length: int, length_normalized: bool) -> float:
        """One micro-batch of the DOMINO loss, forward and backward into D and S: `anchors` references of `length`
        tokens, each scored against the others (in-batch) or against `extra_rows` // `anchors` sampled ones."""
        ids = self._ids(anchors + extra_rows, length)
        mask = torch.ones_like(ids)
        negatives = None
        if l and extra_rows:
            negatives = torch.arange(anchors, anchors + extra_rows, device=self.device).view(anchors, -1)

        def prepare(model: PreTrainedModel) -> Callable[[], object]:
            domain = torch.randn(k, self.hidden, device=self.device, requires_grad=True)
            sample = torch.randn(anchors, l, self.hidden, device=self.device, requires_grad=True) if l else None
            return lambda: domino_loss(model, domain, sample, ids, mask, negatives,
                                       length_normalized=length_normalized).loss.backward()

        return self._time(prepare)

    def decode_step(self, batch: int, context: int, temperature: float) -> float:
        """One step of the decode loop for `batch` rows after `context` cached positions: the forward pass on
        the cache, the logits processors and one draw per row."""
        kv_heads = getattr(self.text, "num_key_value_heads", None) or self.text.num_attention_heads
        head_dim = getattr(self.text, "head_dim", None) or self.hidden // self.text.num_attention_heads

        def prepare(model: PreTrainedModel) -> Callable[[], object]:
            shape = (batch, kv_heads, context, head_dim)
            layers = model.config.get_text_config().num_hidden_layers
            cache = DynamicCache(ddp_cache_data=[(torch.randn(shape, device=self.device, dtype=self.dtype),
                                                  torch.randn(shape, device=self.device, dtype=self.dtype))
                                                 for _ in range(layers)], config=model.config)
            logits = torch.randn(batch, self.vocab, device=self.device)
            seeds = row_seeds(0, list(range(batch)), self.device) if temperature > 0 else None
            # No stop ids: every row decodes DECODE_STEPS forward passes (and one more draw).
            return lambda: decode(model, cache, logits, DECODE_STEPS + 1, set(), warpers(temperature), seeds)

        with torch.no_grad():
            return self._time(prepare) / DECODE_STEPS

    def forward(self, rows: int, length: int, every_position: bool = False, prefix: int = 1) -> float:
        """A forward pass over `rows` prompts of `length` tokens: the next-token logits of the last position
        (prefill), or with `every_position` the log-likelihood of every token after a soft prefix of `prefix`
        vectors (scoring, as the diagnostics do)."""
        ids = self._ids(rows, length)
        mask = torch.ones_like(ids)

        def prepare(model: PreTrainedModel) -> Callable[[], object]:
            if every_position:
                vectors = torch.randn(prefix, self.hidden, device=self.device)
                return lambda: prefix_logprobs(model, vectors, ids, mask, length_normalized=True)
            return lambda: last_logits(model, input_ids=ids, attention_mask=mask, use_cache=True)

        with torch.no_grad():
            return self._time(prepare)

    def sft_step(self, rows: int, length: int, lora: LoraSpec | None, checkpointing: bool) -> float:
        """One SFT micro-batch: forward, loss over every position, backward, and an AdamW step over what trains:
        the LoRA weights of `lora` (r, alpha, dropout, target_modules), or every weight when it is None."""
        model = self._trainable_model(lora, checkpointing)
        ids = self._ids(rows, length)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

        def prepare(model: PreTrainedModel) -> Callable[[], object]:
            def step() -> None:
                model(input_ids=ids, labels=ids).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            return step

        return self._time(prepare, model)

    def _trainable_model(self, lora: LoraSpec | None, checkpointing: bool) -> PreTrainedModel:
        """A copy of the slice set up to train as Axolotl's SFT does (one per setting)."""
        if (lora, checkpointing) not in self._trainable:
            model = copy.deepcopy(self.model)
            if lora is not None:
                from peft import LoraConfig, get_peft_model

                targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
                model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                         target_modules=targets))
            else:
                model.requires_grad_(True)
            if checkpointing:
                model.gradient_checkpointing_enable()
                model.enable_input_require_grads()
            self._trainable[(lora, checkpointing)] = model.train()
        return self._trainable[(lora, checkpointing)]


def _use_layers(model: PreTrainedModel, layers: int) -> None:
    """Run `model` with its first `layers` decoder layers of those it was built with (and its config saying so)."""
    decoder, text = model.get_decoder(), model.config.get_text_config()
    if not hasattr(decoder, "probe_layers"):  # plain lists: not registered as submodules twice
        decoder.probe_layers, decoder.probe_types = list(decoder.layers), getattr(text, "layer_types", None)
    decoder.layers = torch.nn.ModuleList(decoder.probe_layers[:layers])
    text.num_hidden_layers = layers
    if isinstance(decoder.probe_types, list):
        text.layer_types = decoder.probe_types[:layers]
