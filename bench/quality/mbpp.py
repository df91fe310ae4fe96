"""MBPP, the working domain of the quality benchmark: the reference statements and the test split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MBPP = REPO / "data" / "mbpp" / "mbpp.jsonl"
TRAIN_REFERENCES = REPO / "data" / "mbpp" / "references_train100.jsonl"
TEST_TASK_IDS = (11, 510)  # MBPP's standard test split


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
