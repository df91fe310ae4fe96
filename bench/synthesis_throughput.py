"""Synthesis throughput: the prefix-cached batched sampler vs one `model.generate` per sample.

What is measured: samples/s and generated tokens/s of drawing samples from a soft domain prefix
D (k x hidden) alone, on the same model (float32, eval, `torch.no_grad`), with the same sampling
settings (temperature, top_p, top_k off, no repetition penalty) and the same max_new_tokens, two ways:

- ours: `axolotl_domino.generate.PrefixSampler`: D is run through the model once, its key/value
  cache is copied into every batch, and `--batch-size` sequences decode together token by token.
  Its time includes that one prefix forward pass.
- baseline (the research code's transformers path): one
  `model.generate(inputs_embeds=D[None], attention_mask=ones, do_sample=True, ...)` call per sample,
  which runs the k-token prefix again for every sample and decodes a single sequence.
- batched generate (the stronger peer): one `model.generate(inputs_embeds=D[None].expand(B, k, h), ...)`
  per batch of the same size as ours: HF's own batching from the same prefix, run once per row.

Why: synthesis draws thousands of samples from D*, so its cost is what the generator's throughput
makes it. With k = 256 the prefix is several times longer than a typical sample, and decoding one
sequence at a time leaves the matrix units idle; the target is >= 10x at k = 256 on 2 CPU cores.

Fairness: both run in one process after a warm-up of each, and the baseline's samples are split
into chunks interleaved with our batches (baseline chunk, our batch, baseline chunk, ...), so a
machine that gets busier or quieter during the run affects both alike. The baseline is slow, so
it runs fewer samples (`--baseline-samples`) and its samples/s comes from those. With a random D
most samples may run to max_new_tokens; the mean generated tokens per sample of both is printed
so the reader can check that the lengths (and so the work per sample) are comparable; tokens/s is
the length-independent view. A generated token is a kept token or the final EOS.

The comparison is repeated `--repeats` times (fresh sampling seeds each time); each ratio is printed
per repeat, then as median (min-max). Last line printed: `speedup: <median of ours / baseline samples/s>`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.generate import PrefixSampler, Sample
from axolotl_domino.hf import pad_token_id, stop_token_ids
from axolotl_domino.induce import embedding_scale


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/smollm2-135m-instruct", help="prepared Hugging Face model folder")
    p.add_argument("--adapter", default=None,
                   help="PEFT prompt-tuning adapter folder: use its D* (`prompt_embeddings` in "
                        "adapter_model.safetensors) instead of a random D; k then comes from it")
    p.add_argument("--k", type=int, default=256, help="domain tokens of the random D (ignored with --adapter)")
    p.add_argument("--num-samples", type=int, default=64, help="samples drawn by our sampler")
    p.add_argument("--baseline-samples", type=int, default=8, help="samples drawn by the baseline (one generate each)")
    p.add_argument("--batch-size", type=int, default=32, help="our sampler's sequences per batch")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="whole comparisons run, for the spread")
    return p.parse_args()


def domain_tokens(model: PreTrainedModel, args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """D* from --adapter, or random normal noise scaled like the model's token embeddings."""
    if args.adapter:
        hidden = model.get_input_embeddings().weight.shape[1]
        domain = load_file(str(Path(args.adapter) / "adapter_model.safetensors"))["prompt_embeddings"].float()
        if domain.shape[1] != hidden:
            raise SystemExit(f"{args.adapter}: D* has hidden size {domain.shape[1]}, the model {hidden}")
        return domain, f"D* from {args.adapter}"
    return random_domain(model, args.k, args.seed), "random D (scaled like token embeddings)"


def random_domain(model: PreTrainedModel, k: int, seed: int) -> torch.Tensor:
    """k random vectors with the per-entry spread of the model's real token embeddings (as induce.py initialises D)."""
    hidden = model.get_input_embeddings().weight.shape[1]
    return torch.randn(k, hidden, generator=torch.Generator().manual_seed(seed)) * embedding_scale(model)


def generated_length(ids: list[int], eos: set[int]) -> tuple[int, bool]:
    """Tokens up to and including the first EOS (padding after it is not generated), and whether EOS came."""
    for position, token in enumerate(ids):
        if token in eos:
            return position + 1, True
    return len(ids), False


def baseline_sample(model: PreTrainedModel, domain: torch.Tensor, args: argparse.Namespace,
                    eos: list[int], pad: int, seed: int) -> tuple[float, int, bool]:
    """One sample the research code's way; returns (seconds, generated tokens, ended at EOS)."""
    torch.manual_seed(seed)
    embeds = domain[None]
    start = time.perf_counter()
    out = model.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
        do_sample=True,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=0,  # off, as in ours (generate would otherwise default to 50)
        max_new_tokens=args.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    seconds = time.perf_counter() - start
    # With inputs_embeds and no input_ids, generate returns only the new tokens.
    length, ended = generated_length(out[0].tolist(), set(eos))
    return seconds, length, ended


def batched_generate(model: PreTrainedModel, domain: torch.Tensor, args: argparse.Namespace, rows: int,
                     eos: list[int], pad: int, seed: int) -> tuple[float, list[int], int]:
    """One HF `generate` call for `rows` samples from the same prefix; (seconds, generated tokens per row, EOS count)."""
    torch.manual_seed(seed)
    embeds = domain[None].expand(rows, -1, -1)
    start = time.perf_counter()
    out = model.generate(
        inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long), do_sample=True,
        temperature=args.temperature, top_p=args.top_p, top_k=0, max_new_tokens=args.max_new_tokens,
        eos_token_id=eos, pad_token_id=pad,
    )
    seconds = time.perf_counter() - start
    lengths = [generated_length(row, set(eos)) for row in out.tolist()]
    return seconds, [length for length, _ in lengths], sum(ended for _, ended in lengths)


def ours_tokens(samples: list[Sample]) -> int:
    return sum(len(s.token_ids) + s.finished for s in samples)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True).eval()
    model.requires_grad_(False)
    domain, source = domain_tokens(model, args)
    k = domain.shape[0]
    eos = sorted(stop_token_ids(model, tokenizer))
    pad = pad_token_id(tokenizer)
    settings = SynthesisConfig(
        temperature=args.temperature, top_p=args.top_p, top_k=0, repetition_penalty=1.0,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
    )
    print(f"model {args.model} ({model.config.num_hidden_layers} layers, hidden {domain.shape[1]}, float32, eval, no_grad)")
    print(f"{source}: k={k}; temperature={args.temperature} top_p={args.top_p} top_k=off "
          f"max_new_tokens={args.max_new_tokens} eos={eos}; threads={torch.get_num_threads()}")
    print(f"ours: {args.num_samples} samples, batch size {args.batch_size}; "
          f"baseline: {args.baseline_samples} samples, one generate each")
    print(f"load average at start (other processes share these cores): {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    with torch.no_grad():
        # Warm-up of every path (allocator, kernels, first-call overheads), not timed.
        warm = settings.model_copy(update={"max_new_tokens": 4})
        short = argparse.Namespace(**{**vars(args), "max_new_tokens": 4})
        PrefixSampler(model, tokenizer, domain, warm, []).sample(list(range(min(2, args.batch_size))))
        baseline_sample(model, domain, short, eos, pad, args.seed)
        batched_generate(model, domain, short, min(2, args.batch_size), eos, pad, args.seed)
        ratios = {"per-sample generate": [], "batched generate": []}
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1} of {args.repeats}")
            rates = one_repeat(model, tokenizer, domain, settings.model_copy(update={"seed": args.seed + repeat}),
                               args, eos, pad, args.seed + repeat)
            for peer, ratio in ratios.items():
                ratio.append(rates["ours"] / rates[peer])
            print(f"  ours / per-sample generate: {ratios['per-sample generate'][-1]:.2f}x, "
                  f"ours / batched generate: {ratios['batched generate'][-1]:.2f}x")

    for peer, ratio in ratios.items():
        print(f"ours / {peer} (samples/s) over {args.repeats} repeats: median {statistics.median(ratio):.2f}x "
              f"(min {min(ratio):.2f}, max {max(ratio):.2f}; each: {', '.join(f'{r:.2f}' for r in ratio)})")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"speedup: {statistics.median(ratios['per-sample generate']):.2f}")


def one_repeat(model, tokenizer, domain, settings: SynthesisConfig, args: argparse.Namespace, eos: list[int],
               pad: int, seed: int) -> dict[str, float]:
    """Ours, batched generate and per-sample generate, interleaved chunk by chunk; samples/s of each."""
    start = time.perf_counter()
    sampler = PrefixSampler(model, tokenizer, domain, settings, [])
    prefix_seconds = time.perf_counter() - start
    batches = [list(range(i, min(i + args.batch_size, args.num_samples)))
               for i in range(0, args.num_samples, args.batch_size)]
    chunks = [c.tolist() for c in np.array_split(np.arange(args.baseline_samples), len(batches) + 1)]
    # name -> [samples, seconds, generated tokens, lengths, ended at EOS]
    rows: dict[str, list] = {name: [0, 0.0, 0, [], 0] for name in ("per-sample generate", "batched generate", "ours")}

    def add(name: str, seconds: float, lengths: list[int], ended: int) -> None:
        row = rows[name]
        row[0] += len(lengths)
        row[1] += seconds
        row[2] += sum(lengths)
        row[3] += lengths
        row[4] += ended

    for chunk, batch in zip(chunks, batches + [None]):
        for i in chunk:
            seconds, length, ended = baseline_sample(model, domain, args, eos, pad, seed * 100_003 + i)
            add("per-sample generate", seconds, [length], int(ended))
        if batch is None:
            continue
        seconds, lengths, ended = batched_generate(model, domain, args, len(batch), eos, pad, seed * 100_003 + batch[0])
        add("batched generate", seconds, lengths, ended)
        start = time.perf_counter()
        out = sampler.sample(batch)
        add("ours", time.perf_counter() - start, [len(s.token_ids) + s.finished for s in out], sum(s.finished for s in out))
    rows["ours"][1] += prefix_seconds  # the one prefix forward pass counts
    rates = {}
    for name, (n, seconds, tokens, lengths, ended) in rows.items():
        rates[name] = n / seconds
        print(f"  {name:20s}: {n:3d} samples in {seconds:7.2f} s = {n / seconds:7.3f} samples/s, "
              f"{tokens / seconds:8.1f} generated tokens/s; tokens/sample mean {statistics.mean(lengths):.1f} "
              f"(min {min(lengths)}, max {max(lengths)}), {ended}/{n} ended at EOS")
    return rates


if __name__ == "__main__":
    main()
