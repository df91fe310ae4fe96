"""The LLM judge filter (`domino.filters.judge`): a chat model rates each instruction, then each response.

The research pipeline (docs/METHOD.md) kept instructions rated "excellent" on a five-level rubric and
responses rated "good" on a three-level one. Verdicts are JSON objects; a reply without one with a
known rating is `judge_unparsable` (removed unless `keep_unparsable`, counted either way).

Replies are journaled batch by batch (`judge_journal`), keyed by the prompt: a merge killed while judging
asks again only what has no reply yet, and loads no judge at all when every reply is there.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from axolotl_domino.args import INSTRUCTION_LEVELS, RESPONSE_LEVELS, JudgeFilterConfig
from axolotl_domino.endpoint import EndpointChat, requests_per_call
from axolotl_domino.errors import ConfigError
from axolotl_domino.files import append_jsonl, digest, recover_journal
from axolotl_domino.chat import ChatGenerator
from axolotl_domino.hf import Conversation

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


def judge_identity(settings: JudgeFilterConfig, base_model: str | None) -> str:
    """What makes a judge's replies what they are besides the prompt: which model (or server) and how long they
    may be. The journal of one judge is never read for another."""
    endpoint = settings.endpoint
    return digest({
        "model": None if endpoint else settings.model or base_model,
        "endpoint": [endpoint.base_url, endpoint.model] if endpoint else None,
        "max_new_tokens": settings.max_new_tokens,
    })


def judge_reasons(
    rows: list[dict[str, Any]], settings: JudgeFilterConfig, get_judge: Callable[[], Judge], journal: Path | None = None
) -> list[str | None]:
    """Instructions first; responses (where there are any) only of the rows whose instruction passed.

    `get_judge` is called only if some prompt has no reply in `journal` (the judge is loaded only when needed)."""
    rate = _Rater(settings, get_judge, journal)
    reasons = rate(
        [INSTRUCTION_PROMPT.format(instruction=row["instruction"]) for row in rows],
        INSTRUCTION_LEVELS,
        settings.keep_instruction_levels,
        "instruction",
    )
    answered = [i for i, row in enumerate(rows) if reasons[i] is None and isinstance(row.get("response"), str)]
    prompts = [
        RESPONSE_PROMPT.format(instruction=rows[i]["instruction"], response=rows[i]["response"]) for i in answered
    ]
    for i, reason in zip(answered, rate(prompts, RESPONSE_LEVELS, settings.keep_response_levels, "response")):
        reasons[i] = reason
    return reasons


class _Rater:
    """Asks the judge about prompts that have no journaled reply yet, journaling each batch's replies."""

    def __init__(self, settings: JudgeFilterConfig, get_judge: Callable[[], Judge], journal: Path | None):
        self.settings, self.get_judge, self.journal = settings, get_judge, journal
        self.replies = {row["prompt"]: row["reply"] for row in recover_journal(journal)} if journal else {}

    def __call__(self, prompts: list[str], levels: tuple[str, ...], keep: list[str], what: str) -> list[str | None]:
        """Per prompt: None (kept), `<what>_rated_<level>` or `judge_unparsable`.

        Prompts go to the judge shortest first, so each batch pads little."""
        keys = [digest(prompt) for prompt in prompts]
        todo = sorted((i for i, key in enumerate(keys) if key not in self.replies), key=lambda i: len(prompts[i]))
        if todo:
            self._ask([prompts[i] for i in todo], [keys[i] for i in todo], what, len(prompts))
        reasons: list[str | None] = []
        for key in keys:
            rating = parse_verdict(self.replies[key], levels)
            reasons.append(UNPARSABLE if rating is None else None if rating in keep else f"{what}_rated_{rating}")
        return reasons

    def _ask(self, prompts: list[str], keys: list[str], what: str, total: int) -> None:
        judge, settings = self.get_judge(), self.settings
        local = judge.generator if isinstance(judge, LocalJudge) else None
        conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
        step = requests_per_call(settings.endpoint, settings.batch_size, local, settings.max_new_tokens, conversations)
        with tqdm(total=total, initial=total - len(prompts), desc=f"domino: judging {what}s", unit="sample") as progress:
            for start in range(0, len(prompts), step):
                replies = judge(conversations[start : start + step])
                rows = [{"prompt": key, "reply": reply} for key, reply in zip(keys[start : start + step], replies)]
                if self.journal is not None:
                    append_jsonl(self.journal, rows)
                self.replies.update((row["prompt"], row["reply"]) for row in rows)
                progress.update(len(rows))


def load_judge(settings: JudgeFilterConfig, base_model: str | None, cpu_bf16: bool = False, decode: str = "auto") -> Judge:
    """The server named by `settings.endpoint`, else `settings.model` (else the base model), as a greedy `Judge`."""
    if settings.endpoint is not None:
        LOG.info("domino: the judge is %s at %s", settings.endpoint.model, settings.endpoint.base_url)
        server = EndpointChat(settings.endpoint, "domino.filters.judge.endpoint")
        return lambda conversations: [reply.text for reply in server(conversations, settings.max_new_tokens)]
    name = settings.model or base_model
    if name is None:
        raise ConfigError("domino.filters.judge.model: no judge model; set it, or pass the base model to apply_filters.")
    LOG.info("domino: loading the judge %s", name)
    return LocalJudge(ChatGenerator.load(name, "domino.filters.judge.model", settings.trust_remote_code, cpu_bf16, decode),
                      settings.max_new_tokens)
