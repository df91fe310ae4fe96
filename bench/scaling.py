"""How cost grows: induction step time vs batch B and prefix length k + l, synthesis throughput vs batch size.

Why: the speed-ups of `induction_step.py` and `synthesis_throughput.py` are single points; a user
sizing a run needs the slope. Three sweeps on the same model, in one process:

- induction step (forward + backward of `domino_loss`, shared prefix and naive) vs B at fixed k = l;
- the same vs k + l (k = l) at fixed B;
- `PrefixSampler` samples/s and tokens/s vs batch size from a random D at fixed k.

Each induction point is the median of `--repeats` steps after a warm-up (the two variants
alternate, as in induction_step.py); each synthesis point draws `--samples-per-point` samples after a
warm-up. Writes `--out`/scaling.json and scaling.png; the last line printed is
`RESULT {json}` with every point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from axolotl_domino.args import SynthesisConfig  # noqa: E402
from axolotl_domino.generate import PrefixSampler  # noqa: E402
from induction_step import alternate, load_batch  # noqa: E402
from synthesis_throughput import random_domain  # noqa: E402  (bench/ is on sys.path when run as a script)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/smollm2-135m-instruct", help="prepared Hugging Face model folder")
    p.add_argument("--references", default="data/mbpp/references_train100.jsonl")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="B values (k = l = --kl-fixed)")
    p.add_argument("--kl-fixed", type=int, default=64, help="k = l for the B sweep")
    p.add_argument("--kls", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="k = l values (B = --batch-fixed)")
    p.add_argument("--batch-fixed", type=int, default=3, help="B for the k + l sweep")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant and point")
    p.add_argument("--sample-batches", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64], help="synthesis batch sizes")
    p.add_argument("--samples-per-point", type=int, default=64, help="samples drawn per synthesis batch size")
    p.add_argument("--k-synthesis", type=int, default=64, help="k of the random D sampled from")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for scaling.json and scaling.png")
    return p.parse_args()


def induction_point(model, ids_all, mask_all, B: int, k: int, l: int, repeats: int) -> dict[str, float]:
    """Median step seconds of both variants at (B, k, l), in-batch negatives."""
    hidden = model.get_input_embeddings().weight.shape[1]
    ids, mask = ids_all[:B], mask_all[:B]
    keep = int(mask.sum(1).max())
    ids, mask = ids[:, :keep], mask[:, :keep]
    domain = torch.randn(k, hidden).requires_grad_()
    sample = torch.randn(B, l, hidden).requires_grad_()
    times, _ = alternate(model, domain, sample, ids, mask, None, repeats)
    naive, shared = statistics.median(times["naive"]), statistics.median(times["shared"])
    return {"B": B, "k": k, "l": l, "naive_s": round(naive, 4), "shared_s": round(shared, 4),
            "speedup": round(naive / shared, 3)}


def synthesis_point(model, tokenizer, domain: torch.Tensor, batch: int, samples: int, max_new_tokens: int) -> dict:
    settings = SynthesisConfig(temperature=0.8, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, seed=0,
                               batch_size=batch)
    with torch.no_grad():
        PrefixSampler(model, tokenizer, domain, settings.model_copy(update={"max_new_tokens": 2}), []).sample([0])
        start = time.perf_counter()
        sampler = PrefixSampler(model, tokenizer, domain, settings, [])
        drawn = []
        for first in range(0, samples, batch):
            drawn.extend(sampler.sample(list(range(first, min(first + batch, samples)))))
        seconds = time.perf_counter() - start
    tokens = sum(len(s.token_ids) + s.finished for s in drawn)
    return {"batch_size": batch, "samples": len(drawn), "seconds": round(seconds, 3),
            "samples_per_s": round(len(drawn) / seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def plot(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for variant in ("naive", "shared"):
        axes[0].plot([p["B"] for p in result["induction_vs_B"]], [p[f"{variant}_s"] for p in result["induction_vs_B"]],
                     marker="o", label=variant)
        axes[1].plot([p["k"] + p["l"] for p in result["induction_vs_kl"]],
                     [p[f"{variant}_s"] for p in result["induction_vs_kl"]], marker="o", label=variant)
    axes[0].set(xlabel="B (references per micro-batch)", ylabel="s / step", title=f"induction step, k = l = {result['kl_fixed']}")
    axes[1].set(xlabel="k + l", ylabel="s / step", title=f"induction step, B = {result['batch_fixed']}",
                xscale="log", yscale="log")
    axes[2].plot([p["batch_size"] for p in result["synthesis_vs_batch"]],
                 [p["samples_per_s"] for p in result["synthesis_vs_batch"]], marker="o")
    axes[2].set(xlabel="batch size", ylabel="samples / s", title=f"synthesis, k = {result['k_synthesis']}", xscale="log")
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True).eval()
    model.requires_grad_(False)
    ids, mask = load_batch(args.references, tokenizer, max(args.batches + [args.batch_fixed]))
    load = os.getloadavg()[0]
    result: dict = {"model": args.model, "threads": torch.get_num_threads(), "load_average_start": load,
                    "kl_fixed": args.kl_fixed, "batch_fixed": args.batch_fixed, "k_synthesis": args.k_synthesis,
                    "induction_vs_B": [], "induction_vs_kl": [], "synthesis_vs_batch": []}
    for B in args.batches:
        result["induction_vs_B"].append(induction_point(model, ids, mask, B, args.kl_fixed, args.kl_fixed, args.repeats))
        print("induction", result["induction_vs_B"][-1], flush=True)
    for kl in args.kls:
        result["induction_vs_kl"].append(induction_point(model, ids, mask, args.batch_fixed, kl, kl, args.repeats))
        print("induction", result["induction_vs_kl"][-1], flush=True)
    domain = random_domain(model, args.k_synthesis, seed=0)
    for batch in args.sample_batches:
        point = synthesis_point(model, tokenizer, domain, batch, args.samples_per_point, args.max_new_tokens)
        result["synthesis_vs_batch"].append(point)
        print("synthesis", point, flush=True)
    result["load_average_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "scaling.png")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
