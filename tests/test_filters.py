"""The dataset filters on hand-made rows with known answers, and their configuration (the judge: test_judge.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from axolotl_domino.args import FiltersConfig
from axolotl_domino.files import DataFileError
from axolotl_domino.filters import apply_filters, first_code_block

GOOD_CODE = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
LONG_TASK = (
    "Write a function that takes a list of integers and a target value and returns the indices of the two "
    "numbers whose sum equals the target, assuming exactly one solution exists and the same element may not "
    "be used twice, in any order you like"
)


def rows(*instructions: str, **columns) -> list[dict]:
    """Rows with these instructions; keyword lists become further columns."""
    return [{"instruction": text, **{k: v[i] for k, v in columns.items()}} for i, text in enumerate(instructions)]


def settings(**blocks) -> FiltersConfig:
    return FiltersConfig(**{name: {"enabled": True, **options} for name, options in blocks.items()})


# ----- syntax -----


def test_first_code_block_skips_other_languages_and_handles_bare_fences():
    text = "Run:\n```bash\nls -la\n```\nthen\n```python\nx = 1\n```\n```\ny = 2\n```"
    assert first_code_block(text) == "x = 1\n"
    assert first_code_block("```\nprint(1)\n```") == "print(1)\n"
    assert first_code_block("no code here") is None
    assert first_code_block("```python\nunclosed = True\n") is None


def test_syntax_keeps_valid_drops_invalid_and_missing_blocks():
    data = rows(
        "a",
        "b",
        "c",
        "d",
        response=[
            GOOD_CODE,
            "```python\ndef broken(:\n    pass\n```",
            "Just prose, no code.",
            "```\nprint('bare')\n```",
        ],
    )
    kept, [report] = apply_filters(data, settings(syntax={}), references=[])
    assert [r["instruction"] for r in kept] == ["a", "d"]
    assert (report.name, report.checked, report.removed) == ("syntax", 4, 2)
    assert report.reasons == {"syntax_error": 1, "no_code_block": 1}


def test_syntax_on_whole_instruction():
    data = rows("def f(x):\n    return x", "Write a function to add numbers.")
    kept, [report] = apply_filters(data, settings(syntax={"field": "instruction", "target": "whole_text"}), [])
    assert [r["instruction"] for r in kept] == ["def f(x):\n    return x"]
    assert report.reasons == {"syntax_error": 1}


def test_syntax_on_responses_without_responses_names_the_key():
    with pytest.raises(ValueError, match="domino.filters.syntax.field"):
        apply_filters(rows("a"), settings(syntax={}), [])


# ----- dedup -----


def test_dedup_finds_exact_and_near_duplicates_and_keeps_the_first():
    data = rows(
        LONG_TASK,
        "Write a function to reverse a string.",
        LONG_TASK.upper().replace(" ", "   "),  # same words: exact
        LONG_TASK + " please",  # one extra word: near
        "Write a function to check whether a number is prime.",
    )
    kept, [report] = apply_filters(data, settings(dedup={}), [])
    assert kept == [data[0], data[1], data[4]]
    assert report.reasons == {"exact_duplicate": 1, "near_duplicate": 1}


def test_dedup_keeps_distinct_samples_with_shared_boilerplate():
    data = rows(
        "Write a python function to find the maximum of three numbers.",
        "Write a python function to count the vowels in a string.",
        "Write a python function to sort a list of tuples by their second element.",
    )
    kept, [report] = apply_filters(data, settings(dedup={}), [])
    assert kept == data and report.removed == 0


# ----- novelty -----


def test_novelty_catches_a_copy_of_a_reference():
    references = [LONG_TASK, "Write a function to compute the nth Fibonacci number using memoization."]
    data = rows(
        LONG_TASK.lower() + ".",  # a copy up to case and punctuation
        "Write a function that merges two sorted linked lists into one sorted list and returns its head node.",
        "write a function to compute the nth fibonacci number using memoization",  # short copy
    )
    kept, [report] = apply_filters(data, settings(novelty={}), references)
    assert kept == [data[1]]
    assert report.reasons == {"copies_reference": 2}


def test_novelty_threshold_is_a_share_of_ngrams():
    reference = "one two three four five six seven eight nine ten"
    half_copied = reference + " alpha beta gamma delta epsilon zeta eta theta iota kappa"
    strict = apply_filters(rows(half_copied), settings(novelty={"ngram": 4, "max_ngram_overlap": 0.3}), [reference])
    loose = apply_filters(rows(half_copied), settings(novelty={"ngram": 4, "max_ngram_overlap": 0.5}), [reference])
    assert strict[0] == [] and loose[0] == rows(half_copied)  # 7 of 17 4-grams copied: 0.41


# ----- decontamination -----


@pytest.fixture
def benchmark(tmp_path):
    path = tmp_path / "humaneval_test.jsonl"
    records = [
        {
            "prompt": "Return the list of prime factors of the given integer in ascending order, each repeated as "
            "many times as it divides the number, for any integer greater than one."
        },
        {"prompt": "Check if the brackets are balanced."},  # shorter than 13 words
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_decontamination_drops_samples_sharing_a_13_gram(benchmark):
    data = rows(
        "Implement factorize(n). Return the list of prime factors of the given integer in ascending order, "
        "each repeated as many times as needed.",
        "Write a function to reverse the words of a sentence.",
        "Write a function to add two numbers.",
    )
    data[2]["response"] = "First, check if the brackets are balanced. Then add them."  # short record, whole
    config = settings(decontamination={"files": [str(benchmark)], "field": "prompt"})
    kept, [report] = apply_filters(data, config, [])
    assert kept == [data[1]]
    assert report.reasons == {"contaminated:humaneval_test.jsonl": 2}


def test_decontamination_missing_file_names_the_key_and_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValidationError, match=r"domino\.filters\.decontamination\.files: .*nope\.jsonl"):
        settings(decontamination={"files": [str(missing)]})
    with pytest.raises(ValidationError, match=r"domino\.filters\.decontamination\.files"):
        settings(decontamination={})


def test_decontamination_missing_field_names_the_key(benchmark):
    with pytest.raises(DataFileError, match=r"humaneval_test\.jsonl:1: no field 'text' .*domino\.filters\.decontamination\.field"):
        apply_filters(rows("x"), settings(decontamination={"files": [str(benchmark)]}), [])


# ----- execution -----


def test_execution_keeps_passing_and_drops_failing_samples():
    data = rows(
        "pass",
        "fail",
        "crash",
        "prose",
        "loop",
        "plain",
        response=[
            GOOD_CODE,
            "```python\ndef add(a, b):\n    return a - b\n```",
            "```python\nraise RuntimeError('boom')\n```",
            "No code, sorry.",
            "```python\nwhile True:\n    pass\n```",
            "```python\nprint('no tests, runs fine')\n```",
        ],
        tests=[
            ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
            ["assert add(1, 2) == 3"],
            ["assert True"],
            ["assert True"],
            [],
            None,
        ],
    )
    kept, [report] = apply_filters(data, settings(execution={"timeout_s": 1}), [])
    assert [r["instruction"] for r in kept] == ["pass", "plain"]
    assert report.reasons == {"test_failed": 1, "exec_error": 1, "no_code_block": 1, "timeout": 1}


def test_execution_reports_blocked_samples():
    data = rows("net", response=["```python\nimport socket\nsocket.socket()\n```"])
    kept, [report] = apply_filters(data, settings(execution={}), [])
    assert kept == [] and report.reasons == {"blocked": 1}


# ----- order and configuration -----


def test_filters_run_cheap_first_and_later_ones_see_only_survivors():
    data = rows(
        LONG_TASK,
        LONG_TASK,
        "Write a function to add.",
        "Write a function to do nothing.",
        response=[GOOD_CODE, GOOD_CODE, "```python\ndef (:\n```", GOOD_CODE],
    )
    kept, reports = apply_filters(data, settings(execution={}, dedup={}, syntax={}), [])
    assert [r.name for r in reports] == ["syntax", "dedup", "execution"]
    assert [r.checked for r in reports] == [4, 3, 2]
    assert kept == [data[0], data[3]]


def test_nothing_enabled_is_a_no_op():
    data = rows("a", "a")
    assert apply_filters(data, FiltersConfig(), []) == (data, [])


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ({"dedup": {"threshold": 0}}, "dedup.threshold"),
        ({"novelty": {"max_ngram_overlap": 1.5}}, "novelty.max_ngram_overlap"),
        ({"execution": {"memory_mb": 8}}, "execution.memory_mb"),
        ({"judge": {"keep_instruction_levels": ["superb"]}}, r"domino\.filters\.judge\.keep_instruction_levels"),
        ({"judge": {"keep_response_levels": []}}, r"domino\.filters\.judge\.keep_response_levels"),
        ({"syntax": {"enabeld": True}}, "syntax.enabeld"),
    ],
)
def test_impossible_settings_are_rejected_naming_the_key(blocks, message):
    with pytest.raises(ValidationError, match=message):
        FiltersConfig(**blocks)
