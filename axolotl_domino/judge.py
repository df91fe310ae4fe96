"""The LLM judge filter (`domino.filters.judge`): a chat model rates each instruction, then each response.

The research pipeline (docs/METHOD.md) kept instructions rated "excellent" on a five-level rubric and
responses rated "good" on a three-level one. Verdicts are JSON objects; a reply without one with a
known rating is `judge_unparsable` (removed unless `keep_unparsable`, counted either way).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm

from axolotl_domino.args import INSTRUCTION_LEVELS, RESPONSE_LEVELS, JudgeFilterConfig
from axolotl_domino.endpoint import EndpointChat, requests_per_call
from axolotl_domino.hf import ChatGenerator, Conversation

LOG = logging.getLogger("axolotl.integrations.domino.judge")

UNPARSABLE = "judge_unparsable"

Judge = Callable[[list[Conversation]], list[str]]
"""A judge maps chat conversations (lists of {role, content} turns) to the model's reply to each."""


class LocalJudge:
    """The judge as a local chat model (greedy), which also knows how many verdicts fit in one batch."""

    def __init__(self, generator: ChatGenerator, max_new_tokens: int):
        self.generator, self.max_new_tokens = generator, max_new_tokens

    def __call__(self, conversations: list[Conversation]) -> list[str]:
        return [reply.text for reply in self.generator(conversations, self.max_new_tokens)]


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
    """Per prompt: None (kept), `<what>_rated_<level>` or `judge_unparsable`.

    Prompts go to the judge shortest first, so each batch pads little."""
    reasons: list[str | None] = [None] * len(prompts)
    local = judge.generator if isinstance(judge, LocalJudge) else None
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    step = requests_per_call(settings.endpoint, settings.batch_size, local, settings.max_new_tokens, conversations)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with tqdm(total=len(prompts), desc=f"domino: judging {what}s", unit="sample") as progress:
        for start in range(0, len(prompts), step):
            batch = order[start : start + step]
            replies = judge([conversations[i] for i in batch])
            for i, reply in zip(batch, replies):
                rating = parse_verdict(reply, levels)
                reasons[i] = UNPARSABLE if rating is None else None if rating in keep else f"{what}_rated_{rating}"
            progress.update(len(batch))
    return reasons


def load_judge(settings: JudgeFilterConfig, base_model: str | None, cpu_bf16: bool = False) -> Judge:
    """The server named by `settings.endpoint`, else `settings.model` (else the base model), as a greedy `Judge`."""
    if settings.endpoint is not None:
        LOG.info("domino: the judge is %s at %s", settings.endpoint.model, settings.endpoint.base_url)
        server = EndpointChat(settings.endpoint, "domino.filters.judge.endpoint")
        return lambda conversations: [reply.text for reply in server(conversations, settings.max_new_tokens)]
    name = settings.model or base_model
    if name is None:
        raise ValueError("domino.filters.judge.model: no judge model; set it, or pass the base model to apply_filters.")
    LOG.info("domino: loading the judge %s", name)
    return LocalJudge(ChatGenerator.load(name, "domino.filters.judge.model", settings.trust_remote_code, cpu_bf16),
                      settings.max_new_tokens)
