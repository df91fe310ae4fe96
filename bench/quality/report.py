"""The benchmark's report: the key metrics of a run, mean and spread over seeds, and summary.md."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from quality.conditions import INDUCTION, NUM_SAMPLE_TOKENS, SAMPLING
from quality.downstream import CODE_SYSTEM, SFT_BATCH
from quality.mbpp import TEST_TASK_IDS

# Summary columns: (results key, header, digits). Arrows say which way is better.
COLUMNS = [
    ("distinct_2", "distinct-2 ↑", 3),
    ("self_bleu", "self-BLEU ↓", 3),
    ("vendi", "Vendi ↑", 2),
    ("mean_pairwise_cosine", "pairwise cos ↓", 3),
    ("nearest_ref_cosine_mean", "nearest-ref cos ↓", 3),
    ("share_above_threshold", "share > 0.9 ↓", 3),
    ("mmd", "MMD ↓", 3),
    ("frechet", "Fréchet ↓", 3),
    ("classifier_auc", "AUC (0.5 best)", 3),
    ("heldout_ppl", "held-out ppl ↓", 2),
    ("solution_ppl", "solution ppl ↓", 2),
    ("pass_at_1", "Pass@1 ↑", 3),
]
TRAINING_COLUMNS = [
    ("induction_l1_first", "induction L1 first", 3),
    ("induction_l1_last", "induction L1 last", 3),
    ("induction_l2_last", "induction L2 last", 3),
    ("induction_accuracy_last", "contrastive acc. last", 2),
    ("sft_loss_first", "SFT loss first", 3),
    ("sft_loss_last", "SFT loss last", 3),
    ("responses_unfinished", "answers unfinished", 2),
]


def key_metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The summary's metrics; diversity at matched size R (`synthetic_matched`) when the set is larger."""
    diversity = card["diversity"].get("synthetic_matched") or card["diversity"]["synthetic"]
    full = card["diversity"]["synthetic"]
    memorization, fidelity = card["memorization"], card["fidelity"]
    return {
        "distinct_2": diversity["distinct_2"],
        "self_bleu": diversity["self_bleu"],
        "vendi": diversity["vendi_score"],
        "mean_pairwise_cosine": diversity["mean_pairwise_cosine"],
        "diversity_n": diversity["n"],
        "full_distinct_2": full["distinct_2"],
        "full_self_bleu": full["self_bleu"],
        "full_vendi": full["vendi_score"],
        "full_mean_pairwise_cosine": full["mean_pairwise_cosine"],
        "duplicate_rate": full["duplicate_rate"],
        "nearest_ref_cosine_mean": (memorization["nearest_reference_cosine"] or {}).get("mean"),
        "share_above_threshold": memorization["share_above_threshold"],
        "lcs_mean_chars": (memorization["longest_common_substring"] or {}).get("mean_chars"),
        "mmd": fidelity["mmd"],
        "frechet": fidelity["frechet_distance"],
        "classifier_auc": fidelity["classifier_auc"],
    }


def aggregate(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """condition -> metric -> {mean, std (sample std over seeds; 0 for one seed), n}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for condition in dict.fromkeys(row["condition"] for row in rows):
        out[condition] = {}
        for key in keys:
            values = [r[key] for r in rows if r["condition"] == condition and r.get(key) is not None]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                out[condition][key] = {"mean": float(np.mean(values)), "std": std, "n": len(values)}
    return out


def table(stats: dict[str, dict[str, dict[str, float]]], columns: list[tuple[str, str, int]]) -> list[str]:
    columns = [column for column in columns if any(column[0] in metrics for metrics in stats.values())]
    lines = ["| condition | " + " | ".join(h for _, h, _ in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for condition, metrics in stats.items():
        cells = []
        for key, _, digits in columns:
            m = metrics.get(key)
            cells.append("" if m is None else f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}")
        if any(cells):
            lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return lines


def summary(rows: list[dict[str, Any]], args: argparse.Namespace, wall_s: float) -> str:
    stats = aggregate(rows, [key for key, _, _ in COLUMNS + TRAINING_COLUMNS])
    lines = [
        (f"# DOMINO on MBPP problem statements{' and solutions' if args.solutions else ''}, small scale "
        "(bench/quality_repro.py)"),
        "",
        (
            f"{args.model}; N = {args.num_samples} samples per run, R = {args.num_references} references "
            f"(first MBPP train statements); seeds {args.seeds}; induction k = l = {NUM_SAMPLE_TOKENS}, "
            f"epochs {args.epochs:g}, micro-batch {INDUCTION['micro_batch_size']}, lr {args.induction_lr:g}, lambdas "
            f"{args.lambdas}; sampling temperature {SAMPLING['temperature']}, top_p {SAMPLING['top_p']}, "
            f"max_new_tokens {SAMPLING['max_new_tokens']}. LoRA SFT on N rows, lr {args.sft_lr:g}, "
            f"{math.ceil(args.num_samples / SFT_BATCH)} steps; perplexity on MBPP test statements task_id "
            f"{TEST_TASK_IDS[0]}..{TEST_TASK_IDS[0] + args.num_eval - 1}. Wall time {wall_s / 60:.1f} min."
        ),
        *([
            "",
            (
                "--solutions: the base model answers every statement (greedy, at most "
                f"{args.response_tokens} new tokens, system turn: \"{CODE_SYSTEM}\"); answers cut at that "
                "limit are dropped (`answers unfinished`), the SFT trains on statement and answer of the rest. Solution ppl: the gold MBPP code, fenced as the system turn asks, after "
                f"the statement. Pass@1: greedy answers to the first {args.num_pass} test problems (task_ids "
                f"{TEST_TASK_IDS[0]}..{TEST_TASK_IDS[0] + args.num_pass - 1}, asserts shown in the prompt), the "
                "first python block run with the asserts in the sandbox."
            ),
        ] if args.solutions else []),
        "",
        (
            "Mean ± sample std over seeds. Diversity columns (distinct-2 to pairwise cos) at matched size R: a random "
            "R-subset of each synthetic set (full-set values are in results.json). Memorisation against the R "
            "references; fidelity (MMD, Fréchet, classifier AUC) against the MBPP test split statements (task_ids "
            f"{TEST_TASK_IDS[0]}-{TEST_TASK_IDS[1]}). `references` is the real data: its memorisation is 1 by "
            "construction and its fidelity is the floor to compare with. `references` and `base` do not depend on "
            "the seed and run once (std 0)."
        ),
        "",
        *table(stats, COLUMNS),
        "",
        "## Training",
        "",
        "Induction losses as logged by the Trainer (every step); SFT loss of the first and last step.",
        "",
        *table(stats, TRAINING_COLUMNS),
        "",
    ]
    return "\n".join(lines)
