"""Step time of the DOMINO induction loss: shared-prefix computation vs the naive one.

What is measured: one training step of `axolotl_domino.loss.domino_loss` (forward + backward,
gradients into the soft tokens D [k, hidden] and S [B, l, hidden]; the model is frozen, eval
mode, float32) on the same batch and model, once with `share_prefix=True` (D run once, [S_i]
once per anchor on D's key/value cache, every reference scored against the cached prefix) and
once with `share_prefix=False` (every [D; X_i] and [D; S_i; X_j] run in full).

Why: the loss scores B anchors plus B*K (anchor, candidate) pairs, and every one of those
sequences starts with the same k + l soft tokens, which dominate the length (k = l = 256 vs
references of ~20 tokens). Sharing the prefix removes that repeated work; this script checks
how much wall-clock it saves. The two variants alternate within one run (order flipped every
repetition, after a warm-up of each), so a busy machine slows both alike; medians are reported.

Last line printed: `speedup: <naive median / shared median>`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from axolotl_domino.loss import domino_loss
from axolotl_domino.references import reference_token_ids
from axolotl_domino.hf import pad_right, pad_token_id


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/smollm2-135m-instruct", help="prepared Hugging Face model folder")
    p.add_argument("--references", default="data/mbpp/references_train100.jsonl", help="JSONL with a `text` field")
    p.add_argument("--k", type=int, default=256, help="domain tokens (length of D)")
    p.add_argument("--l", type=int, default=256, help="sample tokens per anchor (length of S_i)")
    p.add_argument("--batch", type=int, default=3, help="anchors per micro-batch (B)")
    p.add_argument("--negatives", choices=["in_batch", "sampled"], default="in_batch")
    p.add_argument("--num-negatives", type=int, default=4,
                   help="with --negatives sampled: K extra references (the ones after the B anchors), "
                        "used as negatives of every anchor")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def load_batch(path: str, tokenizer: PreTrainedTokenizerBase, rows: int) -> tuple[Tensor, Tensor]:
    """The first `rows` references, tokenized without special tokens, EOS appended, right-padded."""
    with open(path, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line, _ in zip(handle, range(rows))]
    ids = [reference_token_ids(text, tokenizer, "text", "user", 1024)[0] for text in texts]
    return pad_right(ids, pad_token_id(tokenizer))


def step(model: PreTrainedModel, domain: Tensor, sample: Tensor, ids: Tensor, mask: Tensor,
         negatives: Tensor | None, share: bool) -> tuple[float, float]:
    """One forward + backward; returns (seconds, loss)."""
    domain.grad = sample.grad = None
    start = time.perf_counter()
    out = domino_loss(model, domain, sample, ids, mask, negatives, share_prefix=share, length_normalized=True)
    out.loss.backward()
    return time.perf_counter() - start, out.loss.item()


def alternate(model: PreTrainedModel, domain: Tensor, sample: Tensor, ids: Tensor, mask: Tensor,
              negatives: Tensor | None, repeats: int,
              report: Callable[[int, str, float, float], None] | None = None) -> tuple[dict[str, list[float]], dict[str, float]]:
    """`repeats` timed steps of each variant after one warm-up step each; the order flips every
    repetition so a change in machine load hits both. Returns (seconds per variant, last loss per variant)."""
    times: dict[str, list[float]] = {"naive": [], "shared": []}
    losses: dict[str, float] = {}
    for rep in range(repeats + 1):  # repetition 0 is the warm-up
        for name in ("naive", "shared") if rep % 2 == 0 else ("shared", "naive"):
            seconds, losses[name] = step(model, domain, sample, ids, mask, negatives, share=(name == "shared"))
            if rep:
                times[name].append(seconds)
            if report is not None:
                report(rep, name, seconds, losses[name])
    return times, losses


def summary(times: list[float]) -> str:
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return f"median {med:.3f} s  IQR {q3 - q1:.3f} s  (min {min(times):.3f}, max {max(times):.3f})"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True).eval()
    model.requires_grad_(False)
    hidden = model.get_input_embeddings().weight.shape[1]

    B, k, l = args.batch, args.k, args.l
    extra = args.num_negatives if args.negatives == "sampled" else 0
    ids, mask = load_batch(args.references, tokenizer, B + extra)
    if len(ids) < B + extra:
        raise SystemExit(f"{args.references} has fewer than {B + extra} references")
    negatives = torch.arange(B, B + extra).expand(B, extra) if extra else None
    pairs = B * (1 + (extra if extra else B - 1))  # (anchor, candidate) pairs scored under [D; S_i]
    domain = torch.randn(k, hidden).requires_grad_()
    sample = torch.randn(B, l, hidden).requires_grad_()

    T = ids.shape[1]  # padded reference width: what the model runs, pads included
    tokens = {"naive": B * (k + T) + pairs * (k + l + T), "shared": k + B * l + (B + pairs) * (T - 1)}
    print(f"model {args.model} (hidden {hidden}, {model.config.num_hidden_layers} layers, float32, frozen, eval)")
    print(f"k={k} l={l} B={B} negatives={args.negatives} ({pairs} pairs) references: {mask.sum(1).tolist()} tokens "
          f"(padded to {T}), length-normalised; threads={torch.get_num_threads()} repeats={args.repeats} (+1 warm-up)")

    def report(rep: int, name: str, seconds: float, loss: float) -> None:
        print(f"  {'warm-up' if rep == 0 else f'rep {rep}'} {name:6s} {seconds:7.3f} s  loss {loss:.6f}")

    times, losses = alternate(model, domain, sample, ids, mask, negatives, args.repeats, report)

    print(f"loss |naive - shared| = {abs(losses['naive'] - losses['shared']):.2e}")
    for name in ("naive", "shared"):
        print(f"{name:6s}: {summary(times[name])}  tokens/step {tokens[name]}")
    paired = [n / s for n, s in zip(times["naive"], times["shared"])]  # same repetition, back to back
    ratios = ", ".join(f"{r:.2f}" for r in paired)
    print(f"token ratio naive/shared: {tokens['naive'] / tokens['shared']:.2f}; "
          f"per-repetition time ratios: {ratios} (median {statistics.median(paired):.2f})")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    speedup = statistics.median(times["naive"]) / statistics.median(times["shared"])
    print(f"speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
