"""The overfitting regime: does DOMINO's contrastive term stop D from memorising few references?

The paper's claim is about the regime where plain prompt tuning (`l1_only`) memorises: few references,
enough soft tokens and training that D reproduces them. This script trains each condition long enough for
that, measures D with the plugin's own induction diagnostics (`axolotl_domino.diagnostics.InductionProbe`)
every `--eval-every` steps, then samples `--num-samples` texts from the final D and scores them.

Setup (every choice is a flag): SmolLM2-135M-Instruct (float32, CPU by default), the first `--references` MBPP train
problem statements (data/mbpp/references_train100.jsonl), k = l = `--tokens`, micro-batch 4 with in-batch
negatives, length-normalised likelihood, AdamW (no weight decay) at a constant `--lr`, `--steps` optimizer
steps (a seeded shuffle per epoch, last partial batch dropped, as the pipeline's induction does). The
training loop is the package's `DominoPromptModel` forward (the loss of `loss.py`) under a plain torch loop,
not Axolotl's trainer: same loss, same parameters, no per-run Axolotl start-up.

Conditions (`--conditions`): `l1_only` (num_sample_tokens 0), `domino_lambda{X}` (paper form, weight X),
`domino_infonce` (InfoNCE form, weight 1), `domino_no_d_grad` (paper form, weight 1, D gets no gradient from
L2), `domino_sampled` (paper form, weight 1, 7 negatives drawn from all references per anchor).

Measured per (condition, seed), all with the same sampling (temperature 1.0, top_p 0.95, 64 new tokens):
- curves: the probe every `--eval-every` steps (near-copy share of 32 samples, nearest-reference cosine,
  finished share, retrieval top-1 over `--eval-references` of the references, reference and held-out NLL
  under D);
- final: `--num-samples` samples from the last D (sampling seed 1000 + seed): near-copy share (nearest
  reference cosine > 0.9, all-MiniLM-L6-v2, the scorecard's definition), the novelty filter's removal rate
  (default settings: > 50% of word 8-grams in the references), Vendi and distinct-2 (every condition has
  the same number of samples), mean nearest-reference cosine, MMD and classifier AUC against the MBPP test
  statements (task_ids 11-510), held-out NLL per token under D of the first 32 of them.

Outputs under --out: <condition>/seed<s>.json (curves, final metrics, a few samples), summary.md (mean and
population std over every finished seed of each condition), curves.png. The last line printed is `near_copy_ratio: X`, X = mean over seeds of
`domino_lambda1.0`'s near-copy share divided by the mean of `l1_only`'s, with both held-out MMDs beside it.
Finished runs are skipped on a rerun.

    .venv/bin/python bench/regime.py --out outputs/regime --seeds 0 1 2

On a GPU: `--device cuda` (and `--tf32` for speed), many runs side by side with `bench/regime_parallel.py`.
A machine without the embedder trains and samples with `--defer-scoring` (each run keeps its texts in
<condition>/seed<s>.raw.json); `--score-deferred` then scores them where the embedder is, with the same code
and the same numbers as an undeferred run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality.mbpp import REPO, TRAIN_REFERENCES, mbpp_test_problems  # noqa: E402

from axolotl_domino.args import DominoConfig, NoveltyFilterConfig, ScoreConfig  # noqa: E402
from axolotl_domino.diagnostics import InductionProbe, copy_metrics  # noqa: E402
from axolotl_domino.files import read_jsonl, write_atomic  # noqa: E402
from axolotl_domino.filters import novelty_reasons  # noqa: E402
from axolotl_domino.generate import PrefixSampler  # noqa: E402
from axolotl_domino.hf import pad_right, pad_token_id  # noqa: E402
from axolotl_domino.induce import DominoPromptModel  # noqa: E402
from axolotl_domino.loss import sample_negatives  # noqa: E402
from axolotl_domino.references import reference_token_ids, sample_text  # noqa: E402
from axolotl_domino.score.diversity import distinct_n, vendi_score  # noqa: E402
from axolotl_domino.score.embedder import load_embedder  # noqa: E402
from axolotl_domino.score.fidelity import classifier_two_sample_auc, mmd_rbf  # noqa: E402
from axolotl_domino.score.plots import curves_png  # noqa: E402

SAMPLING = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 64, "keep_unfinished": True, "batch_size": 64}
MICRO_BATCH = 4
HELDOUT_NLL_TEXTS = 32
CONDITIONS: dict[str, dict[str, Any]] = {
    "l1_only": {"num_sample_tokens": 0},
    "domino_lambda0.1": {"contrastive_weight": 0.1},
    "domino_lambda1.0": {"contrastive_weight": 1.0},
    "domino_infonce": {"contrastive_form": "infonce"},
    "domino_no_d_grad": {"contrastive_trains_domain": False},
    "domino_sampled": {"negatives": "sampled", "num_negatives": 7},
}
HEADLINE, BASELINE = "domino_lambda1.0", "l1_only"
METRICS = ["near_copy_share", "novelty_removed", "nearest_reference_similarity", "vendi", "distinct_2",
           "mmd_test", "auc_test", "heldout_nll", "reference_nll", "finished_share"]


def domino_config(args: argparse.Namespace, references: Path, condition: str, seed: int) -> DominoConfig:
    induction = {"num_domain_tokens": args.tokens, "num_sample_tokens": args.tokens, "micro_batch_size": MICRO_BATCH,
                 "seed": seed, "eval_samples": 32, "eval_references": args.eval_references, **CONDITIONS[condition]}
    return DominoConfig.model_validate({
        "references": {"path": str(references)}, "induction": induction,
        "synthesis": {**SAMPLING, "num_samples": args.num_samples, "seed": 1000 + seed},
    })


def train_and_probe(args, model, tokenizer, domino: DominoConfig, refs: list[str], heldout: list[str], embedder) -> dict:
    """Train D (and S) for `--steps` steps, probing every `--eval-every`; without an embedder the probe keeps its texts."""
    settings, device = domino.induction, model.device
    torch.manual_seed(settings.seed)
    prompt = DominoPromptModel(model, tokenizer, settings, len(refs), {"base_model": args.model})
    params = [p for p in prompt.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    probe = InductionProbe(model, tokenizer, domino, refs, heldout, embedder)
    ids = [reference_token_ids(t, tokenizer, "text", "user", 96)[0] for t in refs]
    order_rng, negative_rng = torch.Generator().manual_seed(settings.seed), torch.Generator().manual_seed(settings.seed + 1)
    history, order, started = [], [], time.perf_counter()
    prompt.train()
    for step in range(1, args.steps + 1):
        if len(order) < MICRO_BATCH:
            order = torch.randperm(len(refs), generator=order_rng).tolist()
        batch, order = order[:MICRO_BATCH], order[MICRO_BATCH:]
        rows, negatives = [ids[i] for i in batch], None
        if settings.negatives == "sampled" and not settings.l1_only:
            drawn = sample_negatives(batch, len(refs), settings.num_negatives, negative_rng)
            rows += [ids[j] for row in drawn for j in row]
            k = settings.num_negatives
            negatives = torch.arange(MICRO_BATCH, MICRO_BATCH + MICRO_BATCH * k, device=device).view(MICRO_BATCH, k)
        x, mask = pad_right(rows, pad_token_id(tokenizer))
        out = prompt(input_ids=x.to(device), attention_mask=mask.to(device), ref_index=torch.tensor(batch, device=device),
                     negatives=negatives)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            metrics, texts = probe.measure(prompt.domain_tokens, prompt.domino_sample)
            entry = {"step": step, "examples": texts[:2]}
            if embedder is None:
                entry["texts"] = texts  # scored later, where the embedder is (--score-deferred)
            else:
                metrics = probe.copy_metrics(texts) | metrics
            metrics.update(step_l1=out.l1.item(), step_l2=None if out.l2 is None else out.l2.item())
            history.append(entry | {"metrics": metrics})
            print(f"  step {step}: near_copy {metrics.get('near_copy_share', float('nan')):.3f} "
                  f"nearest {metrics.get('nearest_reference_similarity', float('nan')):.3f} ref_nll {metrics['reference_nll']:.3f} heldout_nll {metrics.get('heldout_nll', float('nan')):.3f} "
                  f"top1 {metrics.get('retrieval_top1', float('nan')):.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return {"history": history, "domain": prompt.domain_tokens.detach().clone(), "train_seconds": time.perf_counter() - started}


def draw_final(model, tokenizer, domino: DominoConfig, domain) -> tuple[list[str], list[bool]]:
    """`num_samples` samples from the final D with the synthesis sampler (the part that needs the model)."""
    sampler = PrefixSampler(model, tokenizer, domain, domino.synthesis, [])
    samples = list(sampler.sample_many(list(range(domino.synthesis.num_samples))))
    return [sample_text(s.token_ids, tokenizer, "text", "user") for s in samples], [s.finished for s in samples]


def train_references(count: int) -> list[str]:
    """The study's references: the first `count` MBPP train statements."""
    return [row["text"] for row in read_jsonl(TRAIN_REFERENCES)][:count]


def score_final(texts: list[str], finished: list[bool], refs, ref_emb, test_emb, embedder,
                heldout_nll: float) -> dict[str, float]:
    """The final metrics of one run's samples (the part that needs the embedder)."""
    emb = embedder.encode(texts)
    novelty = novelty_reasons([{"instruction": t} for t in texts], NoveltyFilterConfig(enabled=True), refs)
    return {
        **copy_metrics(emb, ref_emb, ScoreConfig().memorization_threshold),
        "novelty_removed": sum(r is not None for r in novelty) / len(texts),
        "vendi": vendi_score(emb), "distinct_2": distinct_n(texts, 2),
        "mmd_test": mmd_rbf(emb, test_emb)["mmd"], "auc_test": classifier_two_sample_auc(emb, test_emb)["auc"],
        "heldout_nll": heldout_nll,
        "finished_share": float(np.mean(finished)),
    }


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def summarise(out: Path, conditions: list[str]) -> dict[str, dict[str, list[float]]]:
    """Mean and spread over every finished seed of each condition (conditions may have different seed counts)."""
    table: dict[str, dict[str, list[float]]] = {}
    curves: list[dict] = []
    for condition in conditions:
        paths = [path for path in sorted((out / condition).glob("seed*.json")) if not path.name.endswith(".raw.json")]
        runs = [json.loads(path.read_text()) for path in paths]
        table[condition] = {m: [r["final"][m] for r in runs] for m in METRICS if m in runs[0]["final"]}
        for i, entry in enumerate(runs[0]["history"]):
            point = curves[i] if i < len(curves) else {"step": entry["step"], "metrics": {}}
            for metric in ("near_copy_share", "heldout_nll", "reference_nll"):
                point["metrics"][f"{condition}/{metric}"] = float(np.mean([r["history"][i]["metrics"].get(metric, np.nan) for r in runs]))
            if i >= len(curves):
                curves.append(point)
    panels = {metric: [f"{c}/{metric}" for c in conditions] for metric in ("near_copy_share", "reference_nll", "heldout_nll")}
    write_atomic(out / "curves.png", curves_png(curves, panels))
    lines = ["| condition | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for condition, metrics in table.items():
        cells = " | ".join(mean_std(metrics[m]) if m in metrics else "-" for m in METRICS)
        lines.append(f"| {condition} | {len(metrics['near_copy_share'])} | {cells} |")
    lines += ["", "Near-copy share of the probe (32 samples) over training steps, mean over seeds:", "",
              "| step | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    for point in curves:
        lines.append(f"| {point['step']} | " + " | ".join(f"{point['metrics'][f'{c}/near_copy_share']:.3f}" for c in conditions) + " |")
    write_atomic(out / "summary.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "regime")
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--conditions", nargs="+", default=["l1_only", "domino_lambda0.1", "domino_lambda1.0", "domino_infonce"],
                        choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--references", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="k = l")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--eval-references", type=int, default=8,
                        help="retrieval subset of the probe (n^2 scored sequences: 32 costs ~100 s per eval here)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--summary-only", action="store_true", help="train nothing: summarise the finished runs in --out")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, ...")
    parser.add_argument("--tf32", action="store_true", help="CUDA: float32 matmuls on TF32 tensor cores (recorded per run)")
    parser.add_argument("--defer-scoring", action="store_true",
                        help="for a machine without the embedder: keep the samples' texts in <condition>/seed<s>.raw.json "
                             "and score them later with --score-deferred")
    parser.add_argument("--score-deferred", action="store_true",
                        help="train nothing: score every raw run in --out into its seed<s>.json, then summarise")
    args = parser.parse_args()
    if args.summary_only:
        return report(args.out, args.conditions)
    refs = train_references(args.references)
    test_texts = [p["text"] for p in mbpp_test_problems()]
    embedder = None if args.defer_scoring else load_embedder()
    ref_emb, test_emb = (None, None) if embedder is None else (embedder.encode(refs), embedder.encode(test_texts))
    if args.score_deferred:
        for raw in sorted(args.out.glob("*/seed*.raw.json")):
            if not raw.with_name(raw.name.replace(".raw", "")).exists():
                score_deferred(raw, embedder, test_emb)
        return report(args.out, args.conditions)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    args.out.mkdir(parents=True, exist_ok=True)
    references = args.out / "references.jsonl"
    write_atomic(references, "".join(json.dumps({"text": t}) + "\n" for t in refs).encode())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).requires_grad_(False)
    hardware = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    heldout = test_texts[:HELDOUT_NLL_TEXTS]
    for condition in args.conditions:
        for seed in args.seeds:
            path = args.out / condition / f"seed{seed}.json"
            raw_path = path.with_name(f"seed{seed}.raw.json")
            if path.exists() or (args.defer_scoring and raw_path.exists()):
                continue
            print(f"{condition} seed {seed}: {args.steps} steps at lr {args.lr} on {hardware}", flush=True)
            domino = domino_config(args, references, condition, seed)
            run = train_and_probe(args, model, tokenizer, domino, refs, heldout, embedder)
            last = run["history"][-1]["metrics"]
            texts, finished = draw_final(model, tokenizer, domino, run["domain"])
            record = {"condition": condition, "seed": seed, "hardware": hardware,
                      "settings": vars(args) | {"out": str(args.out)}, "induction": domino.induction.model_dump(),
                      "train_seconds": run["train_seconds"], "history": run["history"],
                      "heldout_nll": last.get("heldout_nll"), "reference_nll": last["reference_nll"]}
            path.parent.mkdir(parents=True, exist_ok=True)
            if embedder is None:
                write_atomic(raw_path, (json.dumps(record | {"texts": texts, "finished": finished}, default=str) + "\n").encode())
                continue
            record["final"] = score_final(texts, finished, refs, ref_emb, test_emb, embedder, record["heldout_nll"])
            record["final"]["reference_nll"] = record["reference_nll"]
            print(f"  final: {json.dumps(record['final'])}", flush=True)
            write_atomic(path, (json.dumps(record | {"samples": texts[:20]}, indent=1, default=str) + "\n").encode())
    if embedder is not None:
        report(args.out, args.conditions)


def score_deferred(raw: Path, embedder, test_emb) -> None:
    """A run trained with --defer-scoring, scored here exactly as an undeferred run is, into its seed<s>.json."""
    record = json.loads(raw.read_text())
    texts, finished = record.pop("texts"), record.pop("finished")
    refs = train_references(int(record["settings"]["references"]))
    ref_emb = embedder.encode(refs)
    threshold = ScoreConfig().memorization_threshold
    for entry in record["history"]:
        entry["metrics"] = copy_metrics(embedder.encode(entry.pop("texts")), ref_emb, threshold) | entry["metrics"]
    record["final"] = score_final(texts, finished, refs, ref_emb, test_emb, embedder, record["heldout_nll"])
    record["final"]["reference_nll"] = record["reference_nll"]
    print(f"{record['condition']} seed {record['seed']} ({record['hardware']}): {json.dumps(record['final'])}", flush=True)
    write_atomic(raw.with_name(raw.name.replace(".raw", "")),
                 (json.dumps(record | {"samples": texts[:20]}, indent=1, default=str) + "\n").encode())


def report(out: Path, conditions: list[str]) -> None:
    """The summary table, then each DOMINO condition's ratio to l1_only, the headline (lambda 1.0) last."""
    table = summarise(out, conditions)
    if BASELINE not in table:
        return
    base_copies, base_mmd = np.mean(table[BASELINE]["near_copy_share"]), np.mean(table[BASELINE]["mmd_test"])
    others = sorted((c for c in table if c != BASELINE), key=lambda c: c == HEADLINE)
    for condition in others:
        ratio = np.mean(table[condition]["near_copy_share"]) / max(base_copies, 1e-9)
        mmd = np.mean(table[condition]["mmd_test"])
        print(f"{condition}: near-copy ratio {ratio:.3f}, held-out MMD {mmd:.4f} vs {BASELINE} {base_mmd:.4f} "
              f"({100 * (mmd / base_mmd - 1):+.0f}%)")
    if HEADLINE in table:
        print(f"near_copy_ratio: {np.mean(table[HEADLINE]['near_copy_share']) / max(base_copies, 1e-9):.3f}")


if __name__ == "__main__":
    main()
