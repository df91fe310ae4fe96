"""The LLM judge filter: verdict parsing, the rubric's keep rules, and the real-model path."""

from __future__ import annotations

import json

from axolotl_domino.filters import apply_filters
from axolotl_domino.judge import parse_verdict
from tiny_models import build_scripted_chat_model_dir
from test_filters import rows, settings


def test_parse_verdict_is_lenient():
    levels = ("bad", "acceptable", "good")
    assert parse_verdict('Sure. {"rating": "Good", "reason": "fine"} Hope it helps', levels) == "good"
    assert parse_verdict('{broken {"rating": "bad"}', levels) == "bad"
    assert parse_verdict('{"rating": "superb"}', levels) is None
    assert parse_verdict("It is good.", levels) is None


def scripted_judge(calls: list):
    """Rates by markers in the rated text; records every conversation it is given."""

    def judge(conversations):
        calls.extend(conversations)
        replies = []
        for conversation in conversations:
            assert [turn["role"] for turn in conversation] == ["user"]
            prompt = conversation[0]["content"]
            if "<answer>" in prompt:
                rating = "bad" if "WRONG" in prompt else "good"
                replies.append(json.dumps({"rating": rating, "reason": "scripted"}))
            elif "RAMBLE" in prompt:
                replies.append("I would say this is quite excellent overall.")  # no JSON: unparsable
            elif "VAGUE" in prompt:
                replies.append('Verdict: {"rating": "average", "reason": "vague"}')
            else:
                replies.append('{"rating": "excellent", "reason": "clear"}')
        return replies

    return judge


def test_judge_keeps_excellent_instructions_and_good_responses():
    data = rows(
        "Task one.",
        "VAGUE task.",
        "RAMBLE task.",
        "Task four.",
        "No response task.",
        response=["Fine answer.", "Answer.", "Answer.", "WRONG answer.", None],
    )
    calls: list = []
    config = settings(judge={"batch_size": 2})
    kept, [report] = apply_filters(data, config, [], judge=scripted_judge(calls))
    assert [r["instruction"] for r in kept] == ["Task one.", "No response task."]
    assert report.reasons == {"instruction_rated_average": 1, "judge_unparsable": 1, "response_rated_bad": 1}
    assert len(calls) == 5 + 2  # every instruction, then the responses of the rows still kept


def test_judge_can_keep_unparsable_verdicts_and_still_counts_them():
    data = rows("RAMBLE task.", "Task two.")
    config = settings(judge={"keep_unparsable": True})
    kept, [report] = apply_filters(data, config, [], judge=scripted_judge([]))
    assert kept == data
    assert report.removed == 0 and report.kept_flagged == {"judge_unparsable": 1}


def test_judge_from_a_real_model_parses_its_verdicts(tmp_path):
    """The transformers path end to end: a real saved chat model (scripted to answer {"rating": "good"}) is
    loaded from `judge.model`, asked in batches, and its verdicts decide."""
    model = build_scripted_chat_model_dir(tmp_path / "judge", ['{"rating":', '"good"}'])
    data = rows("Write a function to sum a list.", "Reverse a string.", response=["Answer.", "Answer."])
    kept, [report] = apply_filters(data, settings(judge={"model": str(model), "batch_size": 2}), [])
    assert kept == [] and report.reasons == {"instruction_rated_good": 2}  # only "excellent" instructions pass
    lenient = settings(judge={"keep_instruction_levels": ["good", "excellent"], "max_new_tokens": 8})
    kept, [report] = apply_filters(data, lenient, [], base_model=str(model))  # the base model judges by default
    assert kept == data and report.removed == 0 and report.checked == 2
