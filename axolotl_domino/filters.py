"""Quality filters for the synthetic dataset (`domino.filters`), run on rank 0 before it is written.

Every filter is off by default. The enabled ones run in a fixed order, cheap first, so that the
expensive ones see fewer rows: syntax, dedup, novelty, decontamination, execution, judge. Each
sees only the rows the previous ones kept, keeps their order, and reports how many rows it
checked and removed, by reason (`FilterReport`, for the manifest).

Rows are dicts with `instruction` (the synthetic text) and, for instruction domains, `response`;
other keys (e.g. `tests`, a list of assert statements for the execution filter) are passed through.

Texts are compared as lowercase word tokens (runs of letters, digits and underscores), so case,
spacing and punctuation changes do not hide a copy. The research pipeline (docs/METHOD.md) used
the judge, the syntax check and an execution check; dedup, novelty and decontamination are ours.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from axolotl_domino.args import (
    INSTRUCTION_LEVELS,
    RESPONSE_LEVELS,
    DecontaminationFilterConfig,
    DedupFilterConfig,
    ExecutionFilterConfig,
    FiltersConfig,
    JudgeFilterConfig,
    NoveltyFilterConfig,
    SyntaxFilterConfig,
)
from axolotl_domino.sandbox import SandboxResult, run_many

LOG = logging.getLogger("axolotl.integrations.domino.filters")

UNPARSABLE = "judge_unparsable"
TEST_FAILED_EXIT = 3  # exit status of the test harness when a test raises


@dataclass
class FilterReport:
    """What one filter did. `reasons` counts removed rows by reason; `kept_flagged` counts rows it
    flagged but kept (only `judge_unparsable` with `keep_unparsable: true`)."""

    name: str
    checked: int
    removed: int
    reasons: dict[str, int]
    kept_flagged: dict[str, int] = field(default_factory=dict)


Judge = Callable[[list[list[dict[str, str]]]], list[str]]
"""A judge maps chat conversations (lists of {role, content} turns) to the model's reply to each."""


def apply_filters(
    rows: list[dict[str, Any]],
    settings: FiltersConfig,
    references: list[str],
    judge: Judge | None = None,
    base_model: str | None = None,
) -> tuple[list[dict[str, Any]], list[FilterReport]]:
    """The rows every enabled filter keeps, in their original order, and one report per enabled filter.

    `references` are the reference texts (for novelty). The judge filter uses `judge` when given,
    else loads `settings.judge.model`, else `base_model`.
    """
    kept_flags = {UNPARSABLE} if settings.judge.keep_unparsable else set()
    checks: dict[str, Callable[[list[dict[str, Any]]], list[str | None]]] = {
        "syntax": partial(syntax_reasons, settings=settings.syntax),
        "dedup": partial(duplicate_reasons, settings=settings.dedup),
        "novelty": partial(novelty_reasons, settings=settings.novelty, references=references),
        "decontamination": partial(contamination_reasons, settings=settings.decontamination),
        "execution": partial(execution_reasons, settings=settings.execution),
        "judge": lambda kept: judge_reasons(kept, settings.judge, judge or _load_judge(settings.judge, base_model)),
    }
    reports = []
    for name, check in checks.items():
        if not getattr(settings, name).enabled:
            continue
        reasons = check(rows) if rows else []
        removed = Counter(r for r in reasons if r is not None and r not in kept_flags)
        report = FilterReport(
            name=name,
            checked=len(rows),
            removed=sum(removed.values()),
            reasons=dict(removed),
            kept_flagged=dict(Counter(r for r in reasons if r in kept_flags)),
        )
        rows = [row for row, reason in zip(rows, reasons) if reason is None or reason in kept_flags]
        LOG.info("domino: filter %s removed %d of %d rows %s", name, report.removed, report.checked, report.reasons)
        reports.append(report)
    return rows, reports


# ----- text helpers -----

_WORD = re.compile(r"\w+")
# A fenced block: opening fence with an optional info string, body, closing fence (each fence on its own line).
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"", "python", "python3", "py"}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_hashes(tokens: list[str], n: int) -> set[int]:
    """Hashes of the word n-grams; a text shorter than n words is one n-gram, itself."""
    if len(tokens) <= n:
        return {hash(tuple(tokens))}
    return {hash(tuple(tokens[i : i + n])) for i in range(len(tokens) - n + 1)}


def first_code_block(text: str) -> str | None:
    """The body of the first fenced block tagged python/py or untagged; None if there is none."""
    for match in _FENCE.finditer(text):
        if match.group(1).lower() in _PYTHON_TAGS:
            return textwrap.dedent(match.group(2))
    return None


def _text(row: dict[str, Any], key: str, setting: str) -> str:
    value = row.get(key)
    if value is None:
        raise ValueError(
            f"{setting}: rows have no '{key}' text (is domino.responses.enabled off?); "
            "check the instruction instead (field: instruction) or enable responses."
        )
    return value


# ----- the filters: each returns, per row, None (keep) or the reason to drop it -----


def syntax_reasons(rows: list[dict[str, Any]], settings: SyntaxFilterConfig) -> list[str | None]:
    reasons: list[str | None] = []
    for row in rows:
        text = _text(row, settings.field, "domino.filters.syntax.field")
        code = first_code_block(text) if settings.target == "first_code_block" else text
        if code is None:
            reasons.append("no_code_block")
        else:
            reasons.append(None if _parses(code) else "syntax_error")
    return reasons


def _parses(code: str) -> bool:
    with warnings.catch_warnings():  # e.g. SyntaxWarning for invalid escapes: not our business here
        warnings.simplefilter("ignore")
        try:
            ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes
            return False
    return True


def duplicate_reasons(rows: list[dict[str, Any]], settings: DedupFilterConfig) -> list[str | None]:
    """Greedy in index order: a row is dropped if it duplicates a row kept before it."""
    from datasketch import MinHash, MinHashLSH  # here: its import takes a second (scipy), only dedup needs it

    tokens = [words(row["instruction"]) for row in rows]
    shingles = [
        [" ".join(t[i : i + settings.ngram]).encode() for i in range(max(1, len(t) - settings.ngram + 1))]
        for t in tokens
    ]
    sketches = MinHash.bulk(shingles, num_perm=settings.num_perm)
    index = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
    seen: set[tuple[str, ...]] = set()
    reasons: list[str | None] = []
    for i, (row_tokens, sketch) in enumerate(zip(tokens, sketches)):
        if tuple(row_tokens) in seen:
            reasons.append("exact_duplicate")
        elif any(sketch.jaccard(sketches[j]) >= settings.threshold for j in index.query(sketch)):
            reasons.append("near_duplicate")
        else:
            seen.add(tuple(row_tokens))
            index.insert(i, sketch)
            reasons.append(None)
    return reasons


def novelty_reasons(
    rows: list[dict[str, Any]], settings: NoveltyFilterConfig, references: list[str]
) -> list[str | None]:
    seen = set().union(*(ngram_hashes(words(text), settings.ngram) for text in references))
    reasons: list[str | None] = []
    for row in rows:
        grams = ngram_hashes(words(row["instruction"]), settings.ngram)
        overlap = len(grams & seen) / len(grams)
        reasons.append("copies_reference" if overlap > settings.max_ngram_overlap else None)
    return reasons


def contamination_reasons(rows: list[dict[str, Any]], settings: DecontaminationFilterConfig) -> list[str | None]:
    """Instruction and response are checked separately; the first listed file that matches is named."""
    benchmarks = {Path(name).name: _benchmark_ngrams(name, settings) for name in settings.files}
    reasons: list[str | None] = []
    for row in rows:
        texts = [words(t) for t in (row.get("instruction"), row.get("response")) if isinstance(t, str)]
        hit = next((name for name, by_length in benchmarks.items() if _shares_ngram(texts, by_length)), None)
        reasons.append(None if hit is None else f"contaminated:{hit}")
    return reasons


def _benchmark_ngrams(path: str, settings: DecontaminationFilterConfig) -> dict[int, set[int]]:
    """N-gram hashes of a benchmark file, by n-gram length (a record shorter than n is one shorter n-gram)."""
    by_length: dict[int, set[int]] = {}
    with open(Path(path).expanduser(), encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"domino.filters.decontamination.files: {path} line {number} is not JSON ({error})."
                ) from None
            if settings.field not in record:
                raise ValueError(
                    f"domino.filters.decontamination.field: '{settings.field}' missing in {path} line {number}."
                )
            value = record[settings.field]
            tokens = words(value if isinstance(value, str) else json.dumps(value))
            if tokens:
                by_length.setdefault(min(len(tokens), settings.ngram), set()).update(
                    ngram_hashes(tokens, settings.ngram)
                )
    return by_length


def _shares_ngram(texts: Iterable[list[str]], by_length: dict[int, set[int]]) -> bool:
    return any(
        len(tokens) >= n and not ngram_hashes(tokens, n).isdisjoint(hashes)
        for tokens in texts
        for n, hashes in by_length.items()
    )


def execution_reasons(rows: list[dict[str, Any]], settings: ExecutionFilterConfig) -> list[str | None]:
    programs: dict[int, str] = {}
    for i, row in enumerate(rows):
        code = first_code_block(_text(row, settings.field, "domino.filters.execution.field"))
        if code is not None:
            programs[i] = code + _test_harness(row.get(settings.tests_field))
    with tqdm(total=len(programs), desc="domino: running samples in the sandbox", unit="sample") as progress:
        results = run_many(
            list(programs.values()),
            timeout_s=settings.timeout_s,
            memory_mb=settings.memory_mb,
            max_workers=settings.max_workers,
            on_done=lambda _: progress.update(),
        )
    outcome = dict(zip(programs, results))
    return ["no_code_block" if i not in outcome else _execution_reason(outcome[i]) for i in range(len(rows))]


def _test_harness(tests: str | list[str] | None) -> str:
    """Run each test after the code; the first that raises ends the program with TEST_FAILED_EXIT."""
    if not tests:
        return ""
    tests = [tests] if isinstance(tests, str) else list(tests)
    return f"""

import sys as _sys, traceback as _traceback
for _number, _test in enumerate({tests!r}):
    try:
        exec(compile(_test, f"<test {{_number}}>", "exec"), globals())
    except Exception:
        _traceback.print_exc()
        _sys.exit({TEST_FAILED_EXIT})
"""


def _execution_reason(result: SandboxResult) -> str | None:
    """None, exec_error, test_failed, or the sandbox's status: timeout, memory, blocked."""
    if result.status == "ok":
        return None
    if result.status == "error":
        return "test_failed" if result.returncode == TEST_FAILED_EXIT else "exec_error"
    return result.status


# ----- the LLM judge -----

INSTRUCTION_PROMPT = """You are reviewing a task written to train an AI assistant.

Rate the task as one of: very poor, poor, average, good, excellent.
- very poor: meaningless, empty, or not a task.
- poor: unclear, self-contradictory, or missing information needed to do it.
- average: understandable but vague, trivial, or under-specified.
- good: clear and doable, with minor gaps (for example unstated edge cases or input format).
- excellent: clear, specific, self-contained and doable; inputs, outputs and constraints are stated.

Task:
<task>
{instruction}
</task>

Reply with only a JSON object: {{"rating": "<one of the five levels>", "reason": "<one sentence>"}}"""

RESPONSE_PROMPT = """You are reviewing an answer to a task, written to train an AI assistant.

Rate the answer as one of: bad, acceptable, good.
- bad: wrong, incomplete, off-topic, or its code would not run.
- acceptable: mostly right, with flaws (missed edge cases, unclear or unnecessary parts).
- good: correct, complete and clear.

Task:
<task>
{instruction}
</task>

Answer:
<answer>
{response}
</answer>

Reply with only a JSON object: {{"rating": "<bad, acceptable or good>", "reason": "<one sentence>"}}"""


def parse_verdict(text: str, levels: Iterable[str]) -> str | None:
    """The rating of the first JSON object in `text` if it is one of `levels` (case-insensitive), else None."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            verdict, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(verdict, dict):
            rating = str(verdict.get("rating", "")).strip().lower()
            return rating if rating in levels else None
    return None


def judge_reasons(rows: list[dict[str, Any]], settings: JudgeFilterConfig, judge: Judge) -> list[str | None]:
    """Instructions first; responses (where there are any) only of the rows whose instruction passed."""
    reasons = _rate(
        judge,
        [INSTRUCTION_PROMPT.format(instruction=row["instruction"]) for row in rows],
        INSTRUCTION_LEVELS,
        settings.keep_instruction_levels,
        "instruction",
        settings,
    )
    answered = [i for i, row in enumerate(rows) if reasons[i] is None and isinstance(row.get("response"), str)]
    prompts = [
        RESPONSE_PROMPT.format(instruction=rows[i]["instruction"], response=rows[i]["response"]) for i in answered
    ]
    for i, reason in zip(
        answered, _rate(judge, prompts, RESPONSE_LEVELS, settings.keep_response_levels, "response", settings)
    ):
        reasons[i] = reason
    return reasons


def _rate(
    judge: Judge, prompts: list[str], levels: tuple[str, ...], keep: list[str], what: str, settings: JudgeFilterConfig
) -> list[str | None]:
    """Per prompt: None (kept), `<what>_rated_<level>` or `judge_unparsable`."""
    reasons: list[str | None] = []
    with tqdm(total=len(prompts), desc=f"domino: judging {what}s", unit="sample") as progress:
        for start in range(0, len(prompts), settings.batch_size):
            batch = prompts[start : start + settings.batch_size]
            replies = judge([[{"role": "user", "content": prompt}] for prompt in batch])
            for reply in replies:
                rating = parse_verdict(reply, levels)
                if rating is None:
                    reasons.append(UNPARSABLE)
                else:
                    reasons.append(None if rating in keep else f"{what}_rated_{rating}")
            progress.update(len(batch))
    return reasons


class HFJudge:
    """A Hugging Face chat model as a `Judge`: its chat template, greedy decoding, left-padded batches."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "domino.filters.judge.model: the judge's tokenizer has no chat template; name a chat model."
            )
        from axolotl_domino.generate import stop_token_ids

        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens
        self.eos = sorted(stop_token_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]

    @classmethod
    def from_pretrained(cls, name: str, max_new_tokens: int = 256, trust_remote_code: bool = False) -> HFJudge:
        from axolotl_domino.synthesize import load_model  # imported here: synthesize imports this module

        cuda = torch.cuda.is_available()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
        tokenizer, model = load_model(name, device, trust_remote_code)
        return cls(model, tokenizer, max_new_tokens)

    @torch.no_grad()
    def __call__(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        prompts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(self.model.device)
        out = self.model.generate(
            **batch,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=self.eos,
            pad_token_id=self.pad_id,
        )
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def _load_judge(settings: JudgeFilterConfig, base_model: str | None) -> HFJudge:
    name = settings.model or base_model
    if name is None:
        raise ValueError("domino.filters.judge.model: no judge model; set it, or pass the base model to apply_filters.")
    LOG.info("domino: loading the judge %s", name)
    return HFJudge.from_pretrained(name, settings.max_new_tokens, settings.trust_remote_code)
