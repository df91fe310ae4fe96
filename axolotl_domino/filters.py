"""Quality filters for the synthetic dataset (`domino.filters`), run on rank 0 before it is written.

Every filter is off by default. The enabled ones run in a fixed order, cheap first, so that the
expensive ones see fewer rows: syntax, dedup, novelty, decontamination, execution, judge. Each
sees only the rows the previous ones kept, keeps their order, and reports how many rows it
checked and removed, by reason (`FilterReport`, for the manifest).

Rows are dicts with `instruction` (the synthetic text) and, for instruction domains, `response`;
other keys (e.g. `tests`, a list of assert statements for the execution filter) are passed through.

Texts are compared as lowercase word tokens (runs of letters, digits and underscores), so case,
spacing and punctuation changes do not hide a copy. The research pipeline (docs/METHOD.md) used
the judge (`judge.py`), the syntax check and an execution check (`sandbox.py`); dedup, novelty and
decontamination are ours.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from axolotl_domino.args import (
    DecontaminationFilterConfig,
    DedupFilterConfig,
    ExecutionFilterConfig,
    FiltersConfig,
    NoveltyFilterConfig,
    SyntaxFilterConfig,
)
from axolotl_domino.errors import ConfigError
from axolotl_domino.files import read_field
from axolotl_domino.judge import UNPARSABLE, Judge, judge_reasons, load_judge
from axolotl_domino.sandbox import SandboxResult, run_many

LOG = logging.getLogger("axolotl.integrations.domino.filters")

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


def apply_filters(
    rows: list[dict[str, Any]],
    settings: FiltersConfig,
    references: list[str],
    judge: Judge | None = None,
    base_model: str | None = None,
    cpu_bf16: bool = False,
    judge_journal: Path | None = None,
    decode: str = "auto",
) -> tuple[list[dict[str, Any]], list[FilterReport]]:
    """The rows every enabled filter keeps, in their original order, and one report per enabled filter.

    `references` are the reference texts (for novelty). The judge filter uses `judge` when given,
    else loads `settings.judge.model`, else `base_model` (in bf16 on a CPU when `cpu_bf16`, decoding as `decode`
    says), and only when `judge_journal` lacks a reply it needs.
    """
    get_judge = (lambda: judge) if judge is not None else cache(lambda: load_judge(settings.judge, base_model, cpu_bf16, decode))
    kept_flags = {UNPARSABLE} if settings.judge.keep_unparsable else set()
    checks: dict[str, Callable[[list[dict[str, Any]]], list[str | None]]] = {
        "syntax": partial(syntax_reasons, settings=settings.syntax),
        "dedup": partial(duplicate_reasons, settings=settings.dedup),
        "novelty": partial(novelty_reasons, settings=settings.novelty, references=references),
        "decontamination": partial(contamination_reasons, settings=settings.decontamination),
        "execution": partial(execution_reasons, settings=settings.execution),
        "judge": partial(judge_reasons, settings=settings.judge, get_judge=get_judge, journal=judge_journal),
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
        raise ConfigError(
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
    key = "domino.filters.decontamination"
    for _, value in read_field(path, settings.field, f"{key}.files", f"{key}.field", strings=False):
        tokens = words(value if isinstance(value, str) else json.dumps(value))
        if tokens:
            by_length.setdefault(min(len(tokens), settings.ngram), set()).update(ngram_hashes(tokens, settings.ngram))
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
