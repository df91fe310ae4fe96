"""DOMINO's quality claim on MBPP problem statements (and solutions), sized for a 2-core CPU.

The claim (docs/METHOD.md): samples drawn from domain tokens D* trained with the contrastive term
(L = L1 + lambda * L2) are more diverse than those of plain prompt tuning (L1 only), which memorises
the references, while staying in the domain, and fine-tuning on them helps. This script measures the
first part with the package's scorecard and the second with downstream fine-tunes (below). Conditions,
all on one embedded model (`--model`, default SmolLM2-135M-Instruct) with the same number N of synthetic
problem statements and the same sampling (temperature 1.0, top_p 0.95, max_new_tokens 64, stop at EOS, unfinished samples kept):

- `domino_lambda{X}`: `axolotl domino induce` then `axolotl domino synthesize` on a YAML written into
  the run's folder: k = l = 8, references = the first R MBPP train statements
  (data/mbpp/references_train100.jsonl), in-batch negatives, micro-batch 4, length-normalised
  likelihood, lr 0.02 (the quickstart's induction lr), no responses, dataset format `completion`;
- `l1_only`: the same induction with `l1_only: true` (`num_sample_tokens: 0`): plain prompt tuning;
- `few_shot`: no training. MAGPIE-style few-shot: a user turn of the chat template listing 5 of the
  references (chosen by the seed) and asking for one new task like them, then the assistant header;
  the prefix is the model's input embeddings of those tokens, sampled with the same `PrefixSampler`;
- `references`: the R references themselves (no synthesis; run once, it does not depend on the seed).

The seed sets `domino.induction.seed`, `domino.synthesis.seed` and the few-shot examples.

Measurements per (condition, seed):
- the scorecard (`axolotl_domino.score.run_scorecard`) of the synthetic set against the R references,
  with the MBPP test split statements (task_ids 11-510) as the held-out set for fidelity. Every
  scorecard is computed in this process with one embedder and the same settings (the YAMLs turn the
  synthesis stage's own scorecard off), so conditions that do not go through the CLI are scored the
  same way. The summary's diversity columns are at matched size R (the scorecard's random
  `synthetic_matched` subset), because distinct-n, self-BLEU and Vendi depend on the set size;
- downstream proxy: a LoRA fine-tune of the base model on the texts cycled to N rows (so every
  condition trains on N rows for N/4 steps), then the token-level NLL and perplexity of the first
  `--num-eval` MBPP test statements (task_ids 11-110 by default); row `base` is the base model
  without fine-tuning. Each text is one user turn of the chat template,
  `<|im_start|>user\\n{text}<|im_end|>` (no system turn); the loss, in training and evaluation, is over
  the text's tokens and the closing `<|im_end|>`, the turn header is context only. LoRA r = 8,
  alpha 16, on q/k/v/o projections, AdamW, lr 1e-3 decaying linearly to 0, micro-batch 4, one
  epoch, seed 0 for every run (so the `references` and `base` rows do not change with the seed).
  The fine-tune runs in this process with torch + PEFT, not Axolotl: a dozen fine-tunes of 16 steps
  would spend most of their time in Axolotl's start-up and preprocessing.

`--solutions` asks the downstream question on problems *and* solutions, with execution. The base model
answers every text of a condition's set (the package's `Responder`: greedy, at most `--response-tokens`
new tokens, under a system turn asking for one ```python block); an answer cut at that limit is dropped
with its statement, as the synthesis stage drops unfinished responses, and the LoRA fine-tune trains on
the remaining system turn + statement + answer (loss on the statement and the answer), cycled to N
rows. After it:
- held-out statement perplexity as above, but after the same system turn;
- held-out solution perplexity: the gold MBPP code of the same test problems, fenced the way the system
  turn asks, as the assistant turn after the statement (loss on the code only);
- greedy Pass@1 on the first `--num-pass` MBPP test problems (task_ids 11..), MBPP's usual prompt (the
  statement, then "Your code should pass these tests:" and the asserts); the first python block of the
  answer runs with the problem's setup code and asserts in the package's sandbox (the execution filter);
  an answer without a code block fails. Each run keeps its answers and verdicts in pass_at_1.jsonl.
The responses come from the base model itself, so every condition's fine-tune is self-distillation: the
conditions differ only in the problem statements the model is taught to answer. On SmolLM2-135M Pass@1 is
near zero; `--model qwen2.5-coder-0.5b-instruct` (`make model-qwen`) is a model that solves some MBPP.

Outputs under --out: results.json (one row per condition and seed: key metrics, induction and SFT
losses, timings), base/ and <condition>-seed<s>/ (synthetic.jsonl, scorecard.json/.md and plots; with
--solutions pairs.jsonl and pass_at_1.jsonl; for the
induced conditions the YAML, the CLI logs and the stages' outputs under domino/), summary.md (mean
+- std over seeds). The last line printed is `RESULT {json}` with the per-condition means.

Code: this file is the command line (settings, one run, resume); its parts are in `bench/quality/`:
`mbpp.py` (the data), `conditions.py` (how each condition gets its texts), `downstream.py` (LoRA
fine-tune, held-out perplexity, Pass@1) and `report.py` (key metrics, mean and spread, summary.md).

Run from the repository root: `.venv/bin/python bench/quality_repro.py --out outputs/quality`.
`--quick` is a tiny configuration (1 seed, 8 samples, 8 references, 1 epoch, lambda 1.0) to check
that the script works; numbers from it mean nothing. It took 10 min on the 2-core machine while other
jobs kept the load average at 2.5-3.7. With `--seeds 0 1 2` and the other defaults it took 28.8 min on
the quiet machine (docs/RESULTS.md). The --solutions runs in docs/RESULTS.md took 42.9 min (Qwen2.5-Coder-0.5B, one
seed, N = 32) and 44 min for 7 runs (SmolLM2, N = 64).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from axolotl_domino.args import ScoreConfig
from axolotl_domino.embedded import EMBEDDED_MODELS, prepare_model
from axolotl_domino.files import read_jsonl
from axolotl_domino.score import run_scorecard
from axolotl_domino.score.embedder import Embedder, load_embedder
from quality.conditions import few_shot_samples, induced_samples
from quality.downstream import answer_all, chat_rows, downstream, fine_tune, load_base, problem_turns, user_turns
from quality.mbpp import REPO, TRAIN_REFERENCES, fenced, mbpp_test_problems, write_texts
from quality.report import COLUMNS, aggregate, key_metrics, summary

DEFAULT_MODEL = "smollm2-135m-instruct"

FULL = {"seeds": [0, 1], "num_samples": 64, "num_references": 32, "lambdas": [0.1, 1.0], "epochs": 4.0, "num_eval": 100}
QUICK = {"seeds": [0], "num_samples": 8, "num_references": 8, "lambdas": [1.0], "epochs": 1.0, "num_eval": 20}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, summary.md and the runs")
    p.add_argument("--quick", action="store_true", help="tiny configuration to check the script (explicit flags win)")
    p.add_argument("--seeds", type=int, nargs="+", help=f"default {FULL['seeds']}")
    p.add_argument("--num-samples", type=int, help=f"N synthetic samples per run (default {FULL['num_samples']})")
    p.add_argument("--num-references", type=int, help=f"R references (default {FULL['num_references']})")
    p.add_argument("--lambdas", type=float, nargs="+", help=f"contrastive weights (default {FULL['lambdas']})")
    p.add_argument("--epochs", type=float, help=f"induction epochs (default {FULL['epochs']})")
    p.add_argument("--num-eval", type=int, help=f"MBPP test statements for perplexity (default {FULL['num_eval']})")
    p.add_argument("--induction-lr", type=float, default=0.02, help="lr of D and S (quickstart: 0.02)")
    p.add_argument("--sft-lr", type=float, default=1e-3, help="LoRA lr of the downstream fine-tune")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(EMBEDDED_MODELS),
                   help="embedded model (qwen2.5-coder-0.5b-instruct needs `make model-qwen` first)")
    p.add_argument("--solutions", action="store_true",
                   help="answer every statement with the base model and fine-tune on the pairs; adds solution "
                        "perplexity and execution Pass@1")
    p.add_argument("--num-pass", type=int, default=50, help="MBPP test problems for Pass@1 (--solutions)")
    p.add_argument("--response-tokens", type=int, default=256, help="max new tokens of every answer (--solutions)")
    p.add_argument("--response-batch", type=int, default=16,
                   help="answers generated together (--solutions); small models gain from larger batches on CPU")
    p.add_argument("--resume", action="store_true",
                   help="reuse the rows of OUT/results.json measured with the same settings (seeds and lambdas "
                        "may differ) and run only the missing (condition, seed) pairs")
    args = p.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out.resolve()
    return args


class CachedEmbedder:
    """The scorecard's embedder, remembering every text: the references and the 500 held-out statements
    are scored in every run and would otherwise be embedded again each time."""

    def __init__(self, inner: Embedder):
        self.inner, self.name, self._cache = inner, inner.name, {}

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if text not in self._cache]
        if missing:
            self._cache.update(zip(missing, self.inner.encode(missing, batch_size)))
        return np.stack([self._cache[text] for text in texts]) if texts else self.inner.encode(texts, batch_size)


def evaluate(run: Path, texts: list[str], ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Scorecard of `texts`, then (with --solutions, after the base model answers them) the LoRA fine-tune on
    them cycled to N rows, then the downstream measurements."""
    if not texts:
        sys.exit(f"{run.name}: no non-empty sample to score or fine-tune on")
    write_texts(run / "synthetic.jsonl", texts)
    started = time.perf_counter()
    card = run_scorecard(ctx["score"], texts, ctx["references"], run, embedder=ctx["embedder"])
    scored = time.perf_counter()
    info: dict[str, Any] = {}
    if args.solutions:
        answers = answer_all(ctx["base"], ctx["tokenizer"], texts, args, "answering the statements")
        with (run / "pairs.jsonl").open("w") as f:
            f.writelines(json.dumps({"instruction": t, "response": a, "finished": done}) + "\n"
                         for t, (a, done) in zip(texts, answers))
        # Like the synthesis stage, a pair whose answer hit the token limit is dropped: its code is cut off.
        pairs = [(t, a) for t, (a, done) in zip(texts, answers) if done]
        if not pairs:
            sys.exit(f"{run.name}: every answer hit --response-tokens {args.response_tokens}; raise it")
        rows = chat_rows(ctx["tokenizer"], problem_turns([t for t, _ in pairs], [a for _, a in pairs]), {"user", "assistant"})
        info = {"responses_unfinished": 1 - len(pairs) / len(answers), "respond_s": time.perf_counter() - scored}
    else:
        rows = user_turns(ctx["tokenizer"], texts)
    tuning = time.perf_counter()
    model, losses = fine_tune(ctx["model_dir"], [rows[i % len(rows)] for i in range(args.num_samples)],
                              ctx["pad_id"], args.sft_lr)
    tuned = time.perf_counter()
    measured = downstream(model.merge_and_unload(), ctx, args, run)
    return {
        "num_texts": len(texts),
        **key_metrics(card),
        **info,
        **measured,
        "sft_steps": len(losses),
        "sft_loss_first": losses[0],
        "sft_loss_last": losses[-1],
        "sft_losses": losses,
        "score_s": scored - started,
        "sft_s": tuned - tuning,
        "eval_s": time.perf_counter() - tuned,
    }


def run_one(condition: str, seed: int, ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    run = args.out / f"{condition}-seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    info: dict[str, Any] = {}
    if condition.startswith("domino_lambda"):
        texts, info = induced_samples(run, ctx["model_dir"], ctx["references_path"], seed, args,
                                      float(condition.removeprefix("domino_lambda")))
    elif condition == "l1_only":
        texts, info = induced_samples(run, ctx["model_dir"], ctx["references_path"], seed, args, None)
    elif condition == "few_shot":
        texts = few_shot_samples(ctx["base"], ctx["tokenizer"], ctx["references"], seed, args.num_samples)
        info = {"sample_s": time.perf_counter() - started}
    else:
        texts = ctx["references"]
    row = {"condition": condition, "seed": seed, **info, **evaluate(run, texts, ctx, args)}
    row["total_s"] = time.perf_counter() - started
    return row


# Settings that do not change a (condition, seed) row: which rows a sweep plans, and where it writes.
UNKEYED_SETTINGS = {"out", "quick", "seeds", "lambdas", "resume"}


def resumed_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of an earlier sweep into the same --out (--resume), refused if any measuring setting differs."""
    path = args.out / "results.json"
    if not args.resume or not path.exists():
        return []
    earlier = json.loads(path.read_text())
    differs = {key: (earlier["settings"].get(key), value) for key, value in vars(args).items()
               if key not in UNKEYED_SETTINGS and earlier["settings"].get(key) != value}
    if differs:
        sys.exit(f"--resume: {path} was measured with other settings (earlier, now): {differs}; "
                 "rerun with the earlier settings or use another --out")
    return earlier["rows"]


def main() -> None:
    args = parse_args()
    if args.num_references > 100:
        sys.exit("--num-references: data/mbpp/references_train100.jsonl holds 100 statements")
    wall = time.perf_counter()
    from transformers import AutoTokenizer

    model_dir = prepare_model(args.model, REPO / "models" / args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = args.out / "data"
    references = [row["text"] for row in read_jsonl(TRAIN_REFERENCES)[: args.num_references]]
    problems = mbpp_test_problems()
    heldout = [p["text"] for p in problems]
    heldout_path = write_texts(data / "mbpp_test_statements.jsonl", heldout)
    evaluated = problems[: args.num_eval]
    ctx = {
        "model_dir": model_dir,
        "tokenizer": tokenizer,
        "pad_id": tokenizer.pad_token_id,
        "references": references,
        "references_path": write_texts(data / "references.jsonl", references),
        "score": ScoreConfig(heldout_path=str(heldout_path)),
        "embedder": CachedEmbedder(load_embedder(None)),
        "base": load_base(model_dir).eval(),
    }
    if args.solutions:
        ctx["eval_rows"] = chat_rows(tokenizer, problem_turns([p["text"] for p in evaluated]), {"user"})
        ctx["solution_rows"] = chat_rows(
            tokenizer, problem_turns([p["text"] for p in evaluated], [fenced(p["code"]) for p in evaluated]), {"assistant"})
        ctx["pass_problems"] = problems[: args.num_pass]
    else:
        ctx["eval_rows"] = user_turns(tokenizer, [p["text"] for p in evaluated])
    conditions = [f"domino_lambda{lam}" for lam in args.lambdas] + ["l1_only", "few_shot", "references"]
    earlier = resumed_rows(args)
    # The references and their fine-tune do not depend on the seed (SFT seed fixed, greedy answers): run once.
    # An earlier sweep's references row stands for every seed; otherwise it runs with the first seed's runs.
    references_seed = next((r["seed"] for r in earlier if r["condition"] == "references"), args.seeds[0])
    planned = [("base", None)] + [(c, seed) for seed in args.seeds for c in conditions
                                  if c != "references" or seed == references_seed]
    if references_seed not in args.seeds:
        planned.append(("references", references_seed))
    rows = [r for r in earlier if (r["condition"], r["seed"]) in planned]
    done = {(r["condition"], r["seed"]) for r in rows}
    runs = [run for run in planned if run not in done]
    if earlier:
        tqdm.write(f"--resume: {len(rows)} rows reused from {args.out / 'results.json'}, {len(runs)} runs to go")
    if ("base", None) in runs:
        runs.remove(("base", None))
        started = time.perf_counter()
        (args.out / "base").mkdir(parents=True, exist_ok=True)
        rows.insert(0, {"condition": "base", "seed": None, **downstream(ctx["base"], ctx, args, args.out / "base"),
                        "eval_s": time.perf_counter() - started})
    for condition, seed in tqdm(runs, desc="runs", unit="run"):
        tqdm.write(f"== {condition} seed {seed}")
        rows.append(run_one(condition, seed, ctx, args))
        (args.out / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2, default=str))
        (args.out / "summary.md").write_text(summary(rows, args, time.perf_counter() - wall))  # so far
    wall_s = time.perf_counter() - wall
    (args.out / "results.json").write_text(
        json.dumps({"settings": vars(args), "wall_s": wall_s, "rows": rows}, indent=2, default=str))
    (args.out / "summary.md").write_text(summary(rows, args, wall_s))
    means = {c: {k: round(v["mean"], 4) for k, v in m.items()}
             for c, m in aggregate(rows, [key for key, _, _ in COLUMNS]).items()}
    print("RESULT " + json.dumps({"wall_s": round(wall_s, 1), "means": means}))


if __name__ == "__main__":
    main()
