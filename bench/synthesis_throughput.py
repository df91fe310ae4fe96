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

Last line printed: `speedup: <ours samples/s / baseline samples/s>`.
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
        # Warm-up of both paths (allocator, kernels, first-call overheads), not timed.
        warm = settings.model_copy(update={"max_new_tokens": 4})
        PrefixSampler(model, tokenizer, domain, warm, []).sample(list(range(min(2, args.batch_size))))
        baseline_sample(model, domain, argparse.Namespace(**{**vars(args), "max_new_tokens": 4}), eos, pad, args.seed)

        start = time.perf_counter()
        sampler = PrefixSampler(model, tokenizer, domain, settings, [])
        prefix_seconds = time.perf_counter() - start
        batches = [list(range(i, min(i + args.batch_size, args.num_samples)))
                   for i in range(0, args.num_samples, args.batch_size)]
        chunks = [c.tolist() for c in np.array_split(np.arange(args.baseline_samples), len(batches) + 1)]

        base_times: list[float] = []
        base_lengths: list[int] = []
        base_ended: list[bool] = []
        ours_times: list[float] = []
        ours_samples: list[Sample] = []

        def run_baseline(chunk: list[int]) -> None:
            for i in chunk:
                seconds, length, ended = baseline_sample(model, domain, args, eos, pad, args.seed * 100_003 + i)
                base_times.append(seconds)
                base_lengths.append(length)
                base_ended.append(ended)
                print(f"  baseline sample {i:3d}: {seconds:6.2f} s  {length:4d} tokens  {'EOS' if ended else 'cut'}")

        for chunk, batch in zip(chunks, batches + [None]):
            run_baseline(chunk)
            if batch is None:
                continue
            start = time.perf_counter()
            out = sampler.sample(batch)
            ours_times.append(time.perf_counter() - start)
            ours_samples.extend(out)
            print(f"  ours batch of {len(batch):3d}: {ours_times[-1]:6.2f} s  {ours_tokens(out):5d} tokens  "
                  f"{sum(s.finished for s in out)} EOS")

    base_total = sum(base_times)
    ours_total = prefix_seconds + sum(ours_times)
    ours_lengths = [len(s.token_ids) + s.finished for s in ours_samples]
    rows = {
        "baseline": (len(base_times), base_total, sum(base_lengths), base_lengths, sum(base_ended)),
        "ours": (len(ours_samples), ours_total, sum(ours_lengths), ours_lengths, sum(s.finished for s in ours_samples)),
    }
    print(f"ours: prefix forward (once) {prefix_seconds:.3f} s, included in its time")
    rate: dict[str, float] = {}
    for name, (n, seconds, tokens, lengths, ended) in rows.items():
        rate[name] = n / seconds
        print(f"{name:8s}: {n:3d} samples in {seconds:7.2f} s = {n / seconds:7.3f} samples/s, "
              f"{tokens / seconds:8.1f} generated tokens/s; tokens/sample mean {statistics.mean(lengths):.1f} "
              f"(min {min(lengths)}, max {max(lengths)}), {ended}/{n} ended at EOS")
    print(f"tokens/s ratio ours/baseline: "
          f"{(rows['ours'][2] / ours_total) / (rows['baseline'][2] / base_total):.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"speedup: {rate['ours'] / rate['baseline']:.2f}")


if __name__ == "__main__":
    main()
