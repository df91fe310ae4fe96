"""Does the data of the overfitting regime train a better model? (issue 26)

The regime study (`bench/regime.py`, docs/RESULTS.md) showed that in its regime plain prompt tuning
(`l1_only`) copies 11-17% of its samples and the paper form about 0.3%. This script asks the paper's
downstream question of those same samples: each (condition, seed) run of the study kept its 256 final
samples from D* (`<regime>/<condition>/seed<s>.raw.json`, the GPU runs by default). For each, here:

1. the statements that finished (the pipeline drops a statement cut at the token limit) are answered by
   one responder, the base model, greedily under `CODE_SYSTEM` (the same responder for every condition;
   an answer cut at `--response-tokens` is dropped, as the synthesis stage does);
2. one student (LoRA on the base model, `bench/quality/downstream.py`: r 8 on the attention projections,
   batch 4, lr `--sft-lr`, linear decay) is fine-tuned on the pairs cycled to `--sft-rows` rows, so every
   condition gets the same number of steps; seed s draws the LoRA initialisation and the row order;
3. the student is measured: greedy Pass@1 on the first `--num-pass` MBPP test problems (tests shown, the
   package's sandbox), the NLL per token of their gold solutions, and the share of its answers whose code
   copies a reference's gold solution (more than half of the code's word 8-grams found in the reference
   solutions: the novelty filter's measure, applied to code).

Rows beside the conditions: `references` (the 32 references themselves, answered and fine-tuned the same
way, seed s drawing the fine-tune) and `base` (the model untuned). Seed s of every row shares the fine-tune
seed, so differences are paired by seed.

Every cell is journaled: answers per statement in OUT/answers.jsonl (a statement answered once serves every
cell, and a killed run resumes without asking again), each finished cell in OUT/<row>/seed<s>/result.json
(skipped on a rerun). OUT/summary.md has the table; the last line printed is
`downstream_pass1_delta: X +- SE` (the paper form minus `l1_only`, mean over the paired seeds, with the
standard error of that mean; in parentheses, the standard error of the same difference over the test problems).

    make model-qwen
    .venv/bin/python bench/downstream_regime.py --out outputs/downstream_regime --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality.downstream import (  # noqa: E402
    answer_all, chat_rows, fine_tune, heldout_nll, load_base, pass_at_1, problem_turns)
from quality.mbpp import MBPP, REPO, TRAIN_REFERENCES, fenced, mbpp_test_problems  # noqa: E402

from axolotl_domino.args import NoveltyFilterConfig  # noqa: E402
from axolotl_domino.embedded import EMBEDDED_MODELS, prepare_model  # noqa: E402
from axolotl_domino.files import append_jsonl, read_jsonl, recover_journal, write_atomic  # noqa: E402
from axolotl_domino.filters import first_code_block, novelty_reasons  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
MEASURES = (  # (key, column title, digits)
    ("pass_at_1", "Pass@1", 3),
    ("solution_nll", "gold-solution NLL/token", 3),
    ("copies_reference", "answers copying a reference solution", 3),
    ("pairs", "SFT pairs (distinct)", 0),
    ("data_near_copy_share", "data: near-copy statements", 3),
)
PAIRED = (("domino_lambda1.0", "l1_only"), ("domino_lambda1.0", "references"), ("l1_only", "references"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for answers.jsonl, the cells and summary.md")
    p.add_argument("--regime", type=Path, default=REPO / "docs" / "results" / "regime_gpu",
                   help="the regime study's output folder (runs with their texts: <condition>/seed<s>.raw.json)")
    p.add_argument("--conditions", nargs="+", default=["l1_only", "domino_lambda1.0"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", choices=sorted(EMBEDDED_MODELS),
                   help="responder and student (qwen2.5-coder-0.5b-instruct needs `make model-qwen` first)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES),
                   help="weights of responder and student (bfloat16: the CPU's bf16 units; the LoRA stays float32)")
    p.add_argument("--num-pass", type=int, default=250, help="MBPP test problems (task_id order) for Pass@1 and NLL")
    p.add_argument("--sft-rows", type=int, default=256, help="rows of every fine-tune (pairs cycled to this)")
    p.add_argument("--sft-lr", type=float, default=1e-3)
    p.add_argument("--response-tokens", type=int, default=256, help="max new tokens of every answer")
    p.add_argument("--response-batch", type=int, default=32, help="answers generated together")
    p.add_argument("--only", nargs="+", metavar="ROW/SEED",
                   help="run only these cells (e.g. base l1_only/0); the summary still covers every finished cell")
    p.add_argument("--summary-only", action="store_true", help="write summary.md from the finished cells")
    args = p.parse_args()
    args.out = args.out.resolve()
    return args


def planned_cells(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    cells = [("base", None)] + [(row, seed) for seed in args.seeds for row in ["references", *args.conditions]]
    if args.only:
        cells = [cell for cell in cells if cell_name(*cell) in args.only]
    return cells


def cell_name(row: str, seed: int | None) -> str:
    return row if seed is None else f"{row}/{seed}"


def cell_dir(args: argparse.Namespace, row: str, seed: int | None) -> Path:
    return args.out / row / ("" if seed is None else f"seed{seed}")


def statements(args: argparse.Namespace, row: str, seed: int, references: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The finished statements a row fine-tunes on, and what the regime run measured of them."""
    if row == "references":
        return references, {"data_near_copy_share": 1.0}
    raw, scored = args.regime / row / f"seed{seed}.raw.json", args.regime / row / f"seed{seed}.json"
    if not raw.exists():
        sys.exit(f"{raw}: no texts of {row} seed {seed}; run bench/regime.py with --defer-scoring for it first")
    run = json.loads(raw.read_text())
    final = json.loads(scored.read_text())["final"] if scored.exists() else {}
    texts = [text for text, done in zip(run["texts"], run["finished"]) if done and text.strip()]
    return texts, {"data_near_copy_share": final.get("near_copy_share", float("nan")), "samples": len(run["texts"])}


class AnswerJournal:
    """Greedy answers of the responder per statement, appended as they come: a statement is answered once
    for every cell, and a killed run keeps what was answered."""

    def __init__(self, path: Path):
        self.path = path
        self.answers = {r["instruction"]: (r["response"], r["finished"]) for r in recover_journal(path)}

    def answer(self, model, tokenizer, texts: list[str], args: argparse.Namespace) -> list[tuple[str, bool]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.answers))
        size = args.response_batch * 4  # journal every few batches
        for start in tqdm(range(0, len(missing), size), desc="answering (journaled)", unit="chunk", leave=False):
            chunk = missing[start : start + size]
            replies = answer_all(model, tokenizer, chunk, args, "answer batches")
            append_jsonl(self.path, ({"instruction": t, "response": a, "finished": done} for t, (a, done) in zip(chunk, replies)))
            self.answers.update(zip(chunk, replies))
        return [self.answers[t] for t in texts]


def copy_share(pass_rows: list[dict[str, Any]], reference_code: list[str]) -> float:
    """Share of the student's answers whose code copies a reference's gold solution (word 8-grams, > 50%)."""
    codes = [first_code_block(r["answer"]) or r["answer"] for r in pass_rows]
    reasons = novelty_reasons([{"instruction": code} for code in codes], NoveltyFilterConfig(enabled=True), reference_code)
    return sum(reason is not None for reason in reasons) / len(codes)


def measure(model, ctx: dict[str, Any], args: argparse.Namespace, run: Path) -> dict[str, Any]:
    out = heldout_nll(model, ctx["solution_rows"], ctx["pad_id"], "solution")
    out |= pass_at_1(model, ctx["tokenizer"], ctx["problems"], args, run)
    out["copies_reference"] = copy_share(read_jsonl(run / "pass_at_1.jsonl"), ctx["reference_code"])
    return out


def run_cell(row: str, seed: int | None, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    run = cell_dir(args, row, seed)
    run.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if row == "base":
        return {"row": row, "seed": seed, **measure(ctx["base"], ctx, args, run), "total_s": time.perf_counter() - started}
    texts, info = statements(args, row, seed, ctx["references"])
    replies = ctx["journal"].answer(ctx["base"], ctx["tokenizer"], texts, args)
    answered = time.perf_counter()
    pairs = [(t, a) for t, (a, done) in zip(texts, replies) if done]
    if not pairs:
        sys.exit(f"{row} seed {seed}: every answer hit --response-tokens {args.response_tokens}; raise it")
    rows = chat_rows(ctx["tokenizer"], problem_turns([t for t, _ in pairs], [a for _, a in pairs]), {"user", "assistant"})
    model, losses = fine_tune(ctx["model_dir"], [rows[i % len(rows)] for i in range(args.sft_rows)], ctx["pad_id"],
                              args.sft_lr, seed=seed, dtype=DTYPES[args.dtype])
    tuned = time.perf_counter()
    measured = measure(model.merge_and_unload().eval(), ctx, args, run)
    return {"row": row, "seed": seed, **info, "statements": len(texts), "pairs": len(set(pairs)),
            "answers_unfinished": 1 - len(pairs) / len(texts), **measured,
            "sft_loss_first": losses[0], "sft_loss_last": losses[-1], "respond_s": answered - started,
            "sft_s": tuned - answered, "eval_s": time.perf_counter() - tuned, "total_s": time.perf_counter() - started}


def finished_cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(args.out.glob("**/result.json"))]


def mean_sd(values: list[float], digits: int) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"


def common_seeds(cells: list[dict[str, Any]], a: str, b: str) -> list[int]:
    """The seeds both rows finished: the pairs of every paired difference."""
    return sorted({c["seed"] for c in cells if c["row"] == a} & {c["seed"] for c in cells if c["row"] == b})


def paired(cells: list[dict[str, Any]], a: str, b: str, key: str, seeds: list[int]) -> tuple[float, float]:
    """Mean over the paired seeds of a - b and the standard error of that mean."""
    by = {(c["row"], c["seed"]): c[key] for c in cells}
    diffs = [by[a, s] - by[b, s] for s in seeds]
    if len(diffs) < 2:
        return diffs[0], float("nan")
    return float(np.mean(diffs)), float(np.std(diffs, ddof=1) / math.sqrt(len(diffs)))


def problem_se(args: argparse.Namespace, a: str, b: str, seeds: list[int]) -> float:
    """Standard error of the Pass@1 difference a - b from the choice of test problems: per problem, the
    difference averaged over the paired seeds; its spread over problems (the seed SE is that of training)."""
    def passed(row: str, seed: int) -> np.ndarray:
        return np.array([r["result"] == "passed" for r in read_jsonl(cell_dir(args, row, seed) / "pass_at_1.jsonl")], float)

    per_problem = np.mean([passed(a, s) - passed(b, s) for s in seeds], axis=0)
    return float(np.std(per_problem, ddof=1) / math.sqrt(len(per_problem)))


def summary(cells: list[dict[str, Any]], args: argparse.Namespace) -> tuple[str, str]:
    """summary.md, and the headline line (paper form minus l1_only in Pass@1)."""
    rows = [row for row in dict.fromkeys(["base", "references", *(c["row"] for c in cells)]) if any(c["row"] == row for c in cells)]
    se = math.sqrt(0.25 / args.num_pass)
    lines = [f"# Downstream on the regime study's data ({args.model}, {args.dtype}, Pass@1 on {args.num_pass} MBPP "
             f"test problems: standard error at most {se:.3f} per cell)", "",
             "mean ± population std over seeds", "",
             "| row | seeds | " + " | ".join(title for _, title, _ in MEASURES) + " | minutes per cell |",
             "| --- | --- |" + " --- |" * (len(MEASURES) + 1)]
    for row in rows:
        mine = [c for c in cells if c["row"] == row]
        values = [mean_sd([c[key] for c in mine], digits) if all(key in c for c in mine) else ""
                  for key, _, digits in MEASURES]
        minutes = np.mean([c["total_s"] for c in mine]) / 60
        seeds = ",".join(str(c["seed"]) for c in mine if c["seed"] is not None) or "-"
        lines.append(f"| `{row}` | {seeds} | " + " | ".join(values) + f" | {minutes:.1f} |")
    lines += ["", "Paired differences (same seed), mean ± standard error of the mean over seeds (the spread of "
              "training); Pass@1 also with its standard error over the test problems (the spread of the problems "
              "drawn, per problem the difference averaged over the seeds):", ""]
    lines += ["| a - b | seeds | " + " | ".join(title for _, title, _ in MEASURES[:3]) + " | Pass@1 SE over problems |",
              "| --- | --- |" + " --- |" * 4]
    headline = "downstream_pass1_delta: n/a (no seed of both domino_lambda1.0 and l1_only finished)"
    for a, b in PAIRED:
        if not (seeds := common_seeds(cells, a, b)):
            continue
        results = [paired(cells, a, b, key, seeds) for key, _, _ in MEASURES[:3]]
        over_problems = problem_se(args, a, b, seeds)
        lines.append(f"| `{a}` - `{b}` | {len(seeds)} | " + " | ".join(f"{m:+.3f} ± {s:.3f}" for m, s in results)
                     + f" | {over_problems:.3f} |")
        if (a, b) == PAIRED[0]:
            headline = (f"downstream_pass1_delta: {results[0][0]:+.4f} +- {results[0][1]:.4f} ({len(seeds)} paired seeds;"
                        f" SE over the {args.num_pass} problems {over_problems:.4f})")
    return "\n".join(lines) + "\n", headline


# Settings that change a cell's numbers: one OUT holds cells (and answers) of one setting.
KEYED = ("regime", "model", "dtype", "num_pass", "sft_rows", "sft_lr", "response_tokens")


def check_settings(args: argparse.Namespace) -> None:
    """OUT/settings.json records the keyed settings of its first run; a later run with others is refused."""
    path, mine = args.out / "settings.json", {key: str(getattr(args, key)) for key in KEYED}
    if args.regime.resolve().is_relative_to(REPO):  # a checkout elsewhere resumes the same OUT
        mine["regime"] = str(args.regime.resolve().relative_to(REPO))
    if not path.exists():
        write_atomic(path, json.dumps(mine, indent=2).encode())
    elif (earlier := json.loads(path.read_text())) != mine:
        differs = {key: (earlier.get(key), value) for key, value in mine.items() if earlier.get(key) != value}
        sys.exit(f"{path}: its cells were measured with other settings (earlier, now): {differs}; "
                 "use the earlier settings or another --out")


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    check_settings(args)
    cells = [cell for cell in planned_cells(args) if not (cell_dir(args, *cell) / "result.json").exists()]
    if cells and not args.summary_only:
        from transformers import AutoTokenizer

        model_dir = prepare_model(args.model, REPO / "models" / args.model)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        problems = mbpp_test_problems()[: args.num_pass]
        gold = {r["task_id"]: r["code"] for r in read_jsonl(MBPP)}
        references = [r["text"] for r in read_jsonl(args.regime / "references.jsonl")]
        # The regime study trained on the first references of TRAIN_REFERENCES; their task_ids give the gold code.
        train = read_jsonl(TRAIN_REFERENCES)[: len(references)]
        if [r["text"] for r in train] != references:
            sys.exit(f"{args.regime / 'references.jsonl'}: not the first {len(references)} statements of "
                     f"{TRAIN_REFERENCES}; the reference solutions cannot be found")
        ctx = {
            "model_dir": model_dir,
            "tokenizer": tokenizer,
            "pad_id": tokenizer.pad_token_id,
            "problems": problems,
            "solution_rows": chat_rows(tokenizer, problem_turns([p["text"] for p in problems],
                                                                [fenced(p["code"]) for p in problems]), {"assistant"}),
            "references": references,
            "reference_code": [gold[r["task_id"]].replace("\r\n", "\n") for r in train],
            "base": load_base(model_dir, DTYPES[args.dtype]).eval(),
            "journal": AnswerJournal(args.out / "answers.jsonl"),
        }
        for row, seed in tqdm(cells, desc="cells", unit="cell"):
            tqdm.write(f"== {cell_name(row, seed)}")
            result = run_cell(row, seed, ctx, args)
            write_atomic(cell_dir(args, row, seed) / "result.json", json.dumps(result, indent=2).encode())
            tqdm.write(f"   Pass@1 {result['pass_at_1']:.3f}, solution NLL {result['solution_nll']:.3f}, "
                       f"copies {result['copies_reference']:.3f}, {result['total_s'] / 60:.1f} min")
    text, headline = summary(finished_cells(args), args)
    (args.out / "summary.md").write_text(text)
    print(text)
    print(headline)


if __name__ == "__main__":
    main()
