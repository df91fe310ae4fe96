"""Derive the small MBPP files the examples and tests use from the upstream `mbpp.jsonl`.

Run from the repository root: `python data/mbpp/make_slices.py`. Output is deterministic.
Splits follow MBPP's standard task_id ranges (train 601-974, test 11-510).
"""

import json
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    rows = [json.loads(line) for line in (HERE / "mbpp.jsonl").read_text().splitlines()]
    train = [r for r in rows if 601 <= r["task_id"] <= 974]

    # Domain references for induction: problem statements only (plain text, one per line).
    with (HERE / "references_train100.jsonl").open("w") as f:
        for r in train[:100]:
            f.write(json.dumps({"text": r["text"], "task_id": r["task_id"]}) + "\n")

    # A small instruction -> solution slice in Axolotl's `alpaca` format.
    with (HERE / "sft_train64.alpaca.jsonl").open("w") as f:
        for r in train[:64]:
            code = r["code"].replace("\r\n", "\n").strip()
            f.write(json.dumps({"instruction": r["text"], "input": "", "output": f"```python\n{code}\n```"}) + "\n")


if __name__ == "__main__":
    main()
