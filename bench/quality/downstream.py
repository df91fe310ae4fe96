"""Downstream evaluation of a condition's texts: a LoRA fine-tune of the base model on them, then held-out
perplexity of MBPP test statements (and with --solutions, of their gold solutions) and sandboxed greedy Pass@1.

The fine-tune runs in this process with torch + PEFT, not Axolotl: a dozen fine-tunes of 16 steps would
spend most of their time in Axolotl's start-up and preprocessing.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from axolotl_domino.args import ExecutionFilterConfig, ResponsesConfig
from axolotl_domino.filters import execution_reasons
from axolotl_domino.hf import pad_right
from axolotl_domino.references import chat_turn_header
from axolotl_domino.respond import Responder

SFT_SEED, SFT_BATCH, SFT_MAX_TOKENS = 0, 4, 128  # SFT_MAX_TOKENS: per turn (statements); responses get theirs
# --solutions: every problem statement is answered by the base model under this system turn, greedily; the
# same system turn frames the SFT rows, the held-out perplexities and the Pass@1 prompts.
CODE_SYSTEM = (
    "You are an expert Python programmer. Answer with one ```python code block that defines the requested "
    "function, and nothing else."
)
PASS_PROMPT = "{text}\nYour code should pass these tests:\n{tests}"  # MBPP's usual prompt, tests shown
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


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
    responder, answers, size = Responder.of(settings, model, tokenizer), [], args.response_batch
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


def load_base(model_dir: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def fine_tune(model_dir: Path, rows: list[tuple[list[int], list[int]]], pad_id: int, lr: float,
              seed: int = SFT_SEED, dtype: torch.dtype = torch.float32):
    """LoRA on a fresh copy of the base model (weights in `dtype`; PEFT keeps the adapter in float32), one epoch
    over `rows` in an order drawn from `seed`; returns the model and the step losses."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the LoRA initialisation: the same in every run of one seed
    model = get_peft_model(load_base(model_dir, dtype), LoraConfig(task_type="CAUSAL_LM", **LORA)).train()
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
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
