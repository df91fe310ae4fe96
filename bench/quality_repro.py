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

Run from the repository root: `.venv/bin/python bench/quality_repro.py --out outputs/quality`.
`--quick` is a tiny configuration (1 seed, 8 samples, 8 references, 1 epoch, lambda 1.0) to check
that the script works; numbers from it mean nothing. It took 10 min on the 2-core machine while other
jobs kept the load average at 2.5-3.7. With `--seeds 0 1 2` and the other defaults it took 28.8 min on
the quiet machine (docs/RESULTS.md). The --solutions runs in docs/RESULTS.md took 42.9 min (Qwen2.5-Coder-0.5B, one
seed, N = 32) and 44 min for 7 runs (SmolLM2, N = 64).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from axolotl_domino.args import (
    ExecutionFilterConfig,
    ResponsesConfig,
    ScoreConfig,
    SynthesisConfig,
)
from axolotl_domino.embed import Embedder, load_embedder
from axolotl_domino.filters import execution_reasons
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.models import EMBEDDED_MODELS, prepare_model
from axolotl_domino.references import chat_turn_header, sample_text
from axolotl_domino.respond import Responder
from axolotl_domino.score import run_scorecard
from axolotl_domino.shards import read_jsonl
from axolotl_domino.trainer import pad_right

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "smollm2-135m-instruct"
MBPP = REPO / "data" / "mbpp" / "mbpp.jsonl"
TRAIN_REFERENCES = REPO / "data" / "mbpp" / "references_train100.jsonl"
TEST_TASK_IDS = (11, 510)  # MBPP's standard test split

SAMPLING = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 64, "keep_unfinished": True, "batch_size": 32}
INDUCTION = {"num_domain_tokens": 8, "micro_batch_size": 4, "negatives": "in_batch", "likelihood": "length_normalized"}
NUM_SAMPLE_TOKENS = 8
REFERENCE_MAX_TOKENS = 96
FEW_SHOT_EXAMPLES = 5
SFT_SEED, SFT_BATCH, SFT_MAX_TOKENS = 0, 4, 128  # SFT_MAX_TOKENS: per turn (statements); responses get theirs
# --solutions: every problem statement is answered by the base model under this system turn, greedily; the
# same system turn frames the SFT rows, the held-out perplexities and the Pass@1 prompts.
CODE_SYSTEM = (
    "You are an expert Python programmer. Answer with one ```python code block that defines the requested "
    "function, and nothing else."
)
PASS_PROMPT = "{text}\nYour code should pass these tests:\n{tests}"  # MBPP's usual prompt, tests shown
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}

FULL = {"seeds": [0, 1], "num_samples": 64, "num_references": 32, "lambdas": [0.1, 1.0], "epochs": 4.0, "num_eval": 100}
QUICK = {"seeds": [0], "num_samples": 8, "num_references": 8, "lambdas": [1.0], "epochs": 1.0, "num_eval": 20}

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


# --- data ------------------------------------------------------------------------------------


def mbpp_test_problems() -> list[dict[str, Any]]:
    """MBPP's test split (text, code, tests), in task_id order."""
    rows = [json.loads(line) for line in MBPP.read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if TEST_TASK_IDS[0] <= r["task_id"] <= TEST_TASK_IDS[1]), key=lambda r: r["task_id"])


def fenced(code: str) -> str:
    """A gold MBPP solution in the shape the system turn asks for (MBPP's code has Windows line ends)."""
    return "```python\n" + code.replace("\r\n", "\n").strip() + "\n```"


def write_texts(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


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


# --- conditions ------------------------------------------------------------------------------


def axolotl(args: list[str], log: Path) -> str:
    """Run the real `axolotl` CLI as a user would and return the last stdout line (the stage's output path).

    Its stderr (logs, progress bars) goes to `log` as it runs, so a long stage can be followed with `tail -f`.
    """
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    }
    with log.open("w") as handle:
        handle.write(f"$ axolotl {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run(["axolotl", *args], check=False, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
        handle.write(f"--- stdout\n{proc.stdout}")
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        sys.exit(f"axolotl {' '.join(args)} failed (exit {proc.returncode}); log: {log}\n{tail}")
    return proc.stdout.strip().splitlines()[-1]


def induction_losses(domino_dir: Path) -> dict[str, float]:
    """First and last logged L1, last L2 and contrastive accuracy (absent with L1 only), from the induction
    child's log, which the stage keeps (a rerun that skips the up-to-date stage logs nothing new)."""
    logs = sorted((domino_dir / "induction").glob("induce-*.log"), key=lambda path: path.stat().st_mtime)
    lines = logs[-1].read_text().splitlines() if logs else []
    logged = [ast.literal_eval(line[line.index("{"):]) for line in lines if "'domino/l1'" in line]
    if not logged:
        return {}
    first, last = logged[0], logged[-1]
    out = {"induction_l1_first": float(first["domino/l1"]), "induction_l1_last": float(last["domino/l1"])}
    if "domino/l2" in last:
        out["induction_l2_last"] = float(last["domino/l2"])
        out["induction_accuracy_last"] = float(last["domino/contrastive_accuracy"])
    return out


def induced_samples(run: Path, model_dir: Path, references: Path, seed: int, args: argparse.Namespace,
                    contrastive_weight: float | None) -> tuple[list[str], dict[str, Any]]:
    """Induce D* and sample N statements from it through the CLI; `contrastive_weight=None` is L1 only."""
    induction = {
        **INDUCTION, "seed": seed, "num_epochs": args.epochs, "learning_rate": args.induction_lr,
        "axolotl": {"logging_steps": 1},
    }
    if contrastive_weight is None:
        induction.update(l1_only=True, num_sample_tokens=0)
    else:
        induction.update(num_sample_tokens=NUM_SAMPLE_TOKENS, contrastive_weight=contrastive_weight)
    config = {
        "base_model": str(model_dir),
        "plugins": ["axolotl_domino.DominoPlugin"],
        "domino": {
            "output_dir": str(run / "domino"),
            "references": {"path": str(references), "field": "text", "max_tokens": REFERENCE_MAX_TOKENS},
            "induction": induction,
            "synthesis": {**SAMPLING, "num_samples": args.num_samples, "seed": seed},
            "dataset": {"format": "completion"},
            "score": {"enabled": False},  # scored in this process, like every other condition
        },
        # The CLI reads the file as `axolotl train` does, so it must be a complete Axolotl config; these
        # SFT keys are otherwise unused (the fine-tune runs in this process).
        "sequence_len": 256,
        "sample_packing": False,
        "val_set_size": 0,
        "adapter": "lora",
        "lora_r": LORA["r"],
        "lora_alpha": LORA["lora_alpha"],
        "lora_target_modules": LORA["target_modules"],
        "micro_batch_size": SFT_BATCH,
        "num_epochs": 1,
        "learning_rate": args.sft_lr,
        "optimizer": "adamw_torch",
        "save_strategy": "no",
        "output_dir": str(run / "domino" / "sft_unused"),
        "dataset_prepared_path": str(run / "domino" / "sft_unused" / "prepared"),
    }
    yaml_path = run / "domino.yaml"
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    axolotl(["domino", "induce", str(yaml_path)], run / "induce.log")
    induced = time.perf_counter()
    dataset = Path(axolotl(["domino", "synthesize", str(yaml_path)], run / "synthesize.log"))
    info = {
        "induce_s": induced - started,
        "synthesize_s": time.perf_counter() - induced,
        **induction_losses(run / "domino"),
    }
    return [row["text"] for row in read_jsonl(dataset)], info


def few_shot_samples(model, tokenizer, references: list[str], seed: int, num_samples: int) -> list[str]:
    """MAGPIE-style few-shot: the embeddings of a chat prompt showing 5 references as the prefix."""
    examples = random.Random(seed).sample(references, min(FEW_SHOT_EXAMPLES, len(references)))
    request = (
        "Here are some example tasks:\n\n" + "\n\n".join(examples)
        + "\n\nWrite one new task like these. Reply with the task only."
    )
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        prefix = model.get_input_embeddings()(ids)
    settings = SynthesisConfig(**SAMPLING, num_samples=num_samples, seed=seed)
    sampler = PrefixSampler(model, tokenizer, prefix, settings, settings.stop)
    with tqdm(total=num_samples, desc="few-shot sampling", unit="sample", leave=False) as progress:
        samples = list(sampler.sample_many(list(range(num_samples)), progress))
    texts = [sample_text(s.token_ids, tokenizer, "text", "user") for s in samples]
    return [text for text in texts if text]  # empty samples are dropped, as the synthesis stage does


# --- downstream: LoRA fine-tune, held-out perplexity -------------------------------------------


def chat_rows(tokenizer, conversations: list[list[tuple[str, str]]], targets: set[str]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each conversation in ChatML turns; the content and closing EOS of the turns whose
    role is in `targets` are the labels, everything else (headers, other turns, newlines) is context."""
    eos, newline = tokenizer.eos_token_id, tokenizer("\n", add_special_tokens=False)["input_ids"]
    headers = {role: tokenizer(chat_turn_header(tokenizer, role), add_special_tokens=False)["input_ids"]
               for role in {role for turns in conversations for role, _ in turns}}
    rows = []
    for turns in conversations:
        ids, labels = [], []
        for i, (role, text) in enumerate(turns):
            cap = SFT_MAX_TOKENS if role != "assistant" else 2 * SFT_MAX_TOKENS
            body = tokenizer(text, add_special_tokens=False)["input_ids"][:cap] + [eos]
            gap = newline if i < len(turns) - 1 else []
            ids += headers[role] + body + gap
            labels += [-100] * len(headers[role]) + (body if role in targets else [-100] * len(body)) + [-100] * len(gap)
        rows.append((ids, labels))
    return rows


def user_turns(tokenizer, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    """Each text as one user turn, the text and its closing EOS as targets (statement-only mode)."""
    return chat_rows(tokenizer, [[("user", text)] for text in texts], {"user"})


def problem_turns(statements: list[str], solutions: list[str] | None = None) -> list[list[tuple[str, str]]]:
    """--solutions conversations: the code system turn, the statement, and the solution when given."""
    answers = solutions or [None] * len(statements)
    return [[("system", CODE_SYSTEM), ("user", statement)] + ([("assistant", answer)] if answer is not None else [])
            for statement, answer in zip(statements, answers)]


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask = pad_right([ids for ids, _ in rows], pad_id)
    labels, _ = pad_right([labels for _, labels in rows], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def heldout_nll(model, rows: list[tuple[list[int], list[int]]], pad_id: int, name: str = "heldout",
                batch_size: int = 16) -> dict[str, float]:
    """Token-level mean NLL (nats) and perplexity over all target tokens of `rows`, keys prefixed by `name`."""
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="sum").item()
        count += int((targets != -100).sum())
    return {f"{name}_nll": total / count, f"{name}_ppl": math.exp(total / count), f"{name}_tokens": count}


def answer_all(model, tokenizer, instructions: list[str], args: argparse.Namespace, desc: str) -> list[tuple[str, bool]]:
    """(answer, finished) per instruction from the package's Responder: greedy, under the code system turn."""
    settings = ResponsesConfig(enabled=True, system_prompt=CODE_SYSTEM, max_new_tokens=args.response_tokens,
                               batch_size=args.response_batch)
    responder, answers, size = Responder(model, tokenizer, settings), [], args.response_batch
    for start in tqdm(range(0, len(instructions), size), desc=desc, unit="batch", leave=False):
        answers += responder.answer(instructions[start : start + size], seed=0)
    return answers


def pass_at_1(model, tokenizer, problems: list[dict[str, Any]], args: argparse.Namespace, run: Path) -> dict[str, Any]:
    """Greedy Pass@1: the first ```python block of each answer, run with the problem's asserts in the sandbox
    (the package's execution filter); an answer without a code block fails. Answers go to pass_at_1.jsonl."""
    prompts = [PASS_PROMPT.format(text=p["text"], tests="\n".join(p["test_list"])) for p in problems]
    answers = answer_all(model, tokenizer, prompts, args, "Pass@1 answers")
    rows = [{"response": answer, "tests": [p["test_setup_code"]] * bool(p["test_setup_code"]) + p["test_list"]}
            for (answer, _), p in zip(answers, problems)]
    reasons = execution_reasons(rows, ExecutionFilterConfig(enabled=True, tests_field="tests"))
    with (run / "pass_at_1.jsonl").open("w") as f:
        for p, (answer, finished), reason in zip(problems, answers, reasons):
            f.write(json.dumps({"task_id": p["task_id"], "answer": answer, "finished": finished,
                                "result": reason or "passed"}) + "\n")
    counts = {reason or "passed": reasons.count(reason) for reason in dict.fromkeys(reasons)}
    return {"pass_at_1": counts.get("passed", 0) / len(problems), "pass_results": counts}


def downstream(model, ctx: dict[str, Any], args: argparse.Namespace, run: Path) -> dict[str, Any]:
    """Held-out statement perplexity; with --solutions also solution perplexity and Pass@1."""
    out = heldout_nll(model, ctx["eval_rows"], ctx["pad_id"])
    if args.solutions:
        out |= heldout_nll(model, ctx["solution_rows"], ctx["pad_id"], "solution")
        out |= pass_at_1(model, ctx["tokenizer"], ctx["pass_problems"], args, run)
    return out


def load_base(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def fine_tune(model_dir: Path, rows: list[tuple[list[int], list[int]]], pad_id: int, lr: float):
    """LoRA on a fresh copy of the base model, one epoch over `rows`; returns the model and the step losses."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(SFT_SEED)  # same LoRA initialisation in every run
    model = get_peft_model(load_base(model_dir), LoraConfig(task_type="CAUSAL_LM", **LORA)).train()
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SFT_SEED)).tolist()
    steps = math.ceil(len(rows) / SFT_BATCH)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    losses = []
    for step in tqdm(range(steps), desc="LoRA fine-tune", unit="step", leave=False):
        loss = model(**collate([rows[i] for i in order[step * SFT_BATCH : (step + 1) * SFT_BATCH]], pad_id)).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


# --- one run ---------------------------------------------------------------------------------


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


# --- summary ---------------------------------------------------------------------------------


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
