"""Throughput of the plugin's CPU work in float32 and bf16, against batch size and the machine's peak.

What is measured, on the embedded SmolLM2 loaded as the plugin loads it (`hf.load_model`: bf16 with
eager attention, float32 with sdpa), in one process (`--threads`, default all cores):
- **sampler**: `generate.PrefixSampler` drawing `--num-samples` samples from D* (the quickstart's, when
  `--adapter` has one; else noise at the embeddings' scale) at each `--batch-sizes`, the quickstart's sampling
  settings (temperature 0.8, `--sample-tokens` new tokens at most);
- **responder**: `hf.ChatGenerator` answering that many MBPP statements (shortest first, as the pipeline
  does), greedy, `--answer-tokens` new tokens at most, with the quickstart's system prompt;
- **induction**: one step of the DOMINO loss (forward + backward into D and S; k = l = 16, 4 anchors, in-batch
  negatives, length-normalised: the quickstart's settings), median of `--steps`; bf16 is the Axolotl path the
  plugin turns on (bf16 weights, autocast, D and S in float32).

Each row gives generated tokens/s (or s/step) and an achieved rate, 2 x (non-embedding parameters) FLOPs per
token (attention scores and the backward's extra work left out, so it is a lower bound for training), as a
share of two peaks: the **measured** matmul rate of this dtype (a 1024 x 1024 matmul, best of 1.5 s, what the
library reaches here) and the **nominal** peak, cores x clock x FLOPs per cycle from the vector units the CPU
reports (assumed: one FMA of the widest vector per cycle per core, as on AMD Zen 4 and Intel client cores;
twice that for bf16 with AVX512-BF16, 16x for AMX; server cores with two 512-bit FMA units reach twice the
nominal figure).
Last line: `precision: bf16/float32 sampler=<x> responder=<x> induction=<x>` (at the largest batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.cpu import cpu_bf16_units
from axolotl_domino.chat import ChatGenerator
from axolotl_domino.hf import load_model, pad_right
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.induce import embedding_scale
from axolotl_domino.loss import domino_loss
from axolotl_domino.references import reference_token_ids

SYSTEM = "You are a Python expert. Answer with one short Python function in a ```python block."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/smollm2-135m-instruct")
    p.add_argument("--adapter", default="domino_out/induction/adapter", help="D* to sample from (noise if absent)")
    p.add_argument("--references", default="data/mbpp/references_train100.jsonl")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--sample-tokens", type=int, default=80)
    p.add_argument("--answer-tokens", type=int, default=96)
    p.add_argument("--steps", type=int, default=3, help="induction steps per dtype (after one warm-up)")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def matmul_rate(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """Best GFLOP/s of a 1024 x 1024 x 1024 matmul in `dtype` over `seconds`."""
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    a @ b  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 1024**3 / (time.perf_counter() - start) / 1e9)
    return best


def nominal_peak(threads: int) -> dict[str, float]:
    """GFLOP/s per dtype from cores, clock and vector units (the assumption is in the module docstring)."""
    caps = torch.cpu.get_capabilities()
    mhz = next((float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("cpu MHz")), 0.0)
    lanes = 16 if caps.get("avx512_f") else 8 if caps.get("avx2") else 4  # float32 lanes of the widest FMA
    fp32 = threads * mhz / 1000 * lanes * 2
    bf16 = fp32 * (16 if caps.get("amx_bf16") else 2 if caps.get("avx512_bf16") else 1)
    return {"float32": fp32, "bfloat16": bf16}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    texts = [json.loads(line)["text"] for line in Path(args.references).read_text().splitlines()]
    chats = sorted(([{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}] for t in texts[: args.num_samples]),
                   key=lambda chat: len(chat[1]["content"]))
    adapter = Path(args.adapter) / "adapter_model.safetensors"
    measured = {name: matmul_rate(dtype) for name, dtype in DTYPES.items()}
    nominal = nominal_peak(threads)
    print(f"machine: {torch.cpu.get_capabilities().get('cpu_name')}, {threads} threads, bf16 units: "
          f"{', '.join(cpu_bf16_units()) or 'none'}")
    for name in DTYPES:
        print(f"  {name}: measured matmul {measured[name]:.0f} GFLOP/s, nominal peak {nominal[name]:.0f} GFLOP/s")
    print("| dtype | work | batch | tokens/s or s/step | achieved GFLOP/s | of measured matmul | of nominal peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    last: dict[tuple[str, str], float] = {}
    for name, dtype in DTYPES.items():
        _, model = load_model(args.model, torch.device("cpu"), cpu_bf16=dtype == torch.bfloat16)
        model.requires_grad_(False)
        flops_per_token = 2 * (sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
                               + model.get_output_embeddings().weight.numel())  # the tied lm_head still multiplies
        if adapter.is_file():
            domain = load_file(str(adapter))["prompt_embeddings"]
        else:
            domain = torch.randn(16, model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * embedding_scale(model)

        def row(work: str, batch: int | str, value: float, unit: str, rate: float) -> None:
            print(f"| {name} | {work} | {batch} | {value:.2f} {unit} | {rate:.1f} | {rate / measured[name]:.0%} | "
                  f"{rate / nominal[name]:.0%} |", flush=True)

        for batch in args.batch_sizes:
            settings = SynthesisConfig(num_samples=args.num_samples, batch_size=batch, max_new_tokens=args.sample_tokens,
                                       temperature=0.8)
            start = time.perf_counter()
            sampler = PrefixSampler(model, tokenizer, domain, settings, [])
            tokens = sum(len(s.token_ids) + s.finished for s in sampler.sample_many(list(range(args.num_samples))))
            speed = tokens / (time.perf_counter() - start)
            row("sampler", batch, speed, "tok/s", speed * flops_per_token / 1e9)
            last[name, "sampler"] = speed

            generator, start, tokens = ChatGenerator(model, tokenizer, "bench"), time.perf_counter(), 0
            for i in range(0, len(chats), batch):
                replies = generator(chats[i : i + batch], args.answer_tokens)
                tokens += sum(len(tokenizer(r.text, add_special_tokens=False)["input_ids"]) + r.finished for r in replies)
            speed = tokens / (time.perf_counter() - start)
            row("responder", batch, speed, "tok/s", speed * flops_per_token / 1e9)
            last[name, "responder"] = speed

        ids, mask = pad_right([reference_token_ids(t, tokenizer, "text", "user", 96)[0] for t in texts[:4]],
                              tokenizer.pad_token_id)
        d = domain.clone().float().requires_grad_()
        s = (torch.randn(4, 16, model.config.hidden_size) * embedding_scale(model)).requires_grad_()
        times = []
        for step in range(args.steps + 1):
            d.grad = s.grad = None
            start = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = domino_loss(model, d, s, ids, mask, length_normalized=True)
            out.loss.backward()
            if step:
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        # Tokens the step runs, shared prefix: D once, [S_i] per anchor, each (anchor, candidate) pair's reference.
        step_tokens = 16 + 4 * 16 + (4 + 16) * int(mask.sum(1).float().mean())
        row("induction step", 4, seconds, "s/step", 2 * step_tokens * flops_per_token / seconds / 1e9)
        last[name, "induction"] = 1 / seconds
        del model
    ratios = {work: last["bfloat16", work] / last["float32", work] for work in ("sampler", "responder", "induction")}
    print("precision: bf16/float32 " + " ".join(f"{work}={ratio:.2f}" for work, ratio in ratios.items()))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
