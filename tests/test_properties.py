"""Property-based round trips: what the reader accepts and the writers write is what comes back."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from axolotl_domino.files import jsonl_bytes, read_jsonl, write_atomic
from axolotl_domino.layout import Layout, SynthesisRun
from axolotl_domino.references import read_references, write_indexed
from axolotl_domino.write import instruction, record, write_dataset

# Any printable or exotic text a user might have, including newlines, quotes, emoji and NULs.
texts = st.text(min_size=1, max_size=200).filter(lambda t: t.strip())


@settings(max_examples=60, deadline=None)
@given(st.lists(texts, min_size=1, max_size=12), st.sampled_from(["text", "prompt", "ключ"]))
def test_reference_file_round_trip(items, field):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "refs.jsonl"
        path.write_text("".join(json.dumps({field: t, "other": 1}, ensure_ascii=False) + "\n" for t in items), encoding="utf-8")
        refs = read_references(path, field)
        unique = list(dict.fromkeys(items))
        assert refs.texts == unique and refs.duplicates_dropped == len(items) - len(unique)
        indexed = read_jsonl(write_indexed(refs, Layout(Path(tmp) / "out")))
        assert [r["text"] for r in indexed] == unique and [r["ref_index"] for r in indexed] == list(range(len(unique)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=10), st.sampled_from(["completion", "alpaca", "chat_template"]))
def test_dataset_writer_round_trip(pairs, format):
    """The file Axolotl reads (JSON Lines, one record per line) holds exactly the records written, and
    `instruction` reads back what `record` wrote."""
    records = [record(format, text, response) for text, response in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dataset(records, SynthesisRun(Path(tmp)), format)
        assert read_jsonl(path) == records
        assert [instruction(format, row) for row in read_jsonl(path)] == [text for text, _ in pairs]
        assert len(path.read_bytes().splitlines()) == len(records)  # no raw newline inside a record
        from datasets import load_dataset  # the loader Axolotl uses for local JSON files

        loaded = load_dataset("json", data_files=str(path), split="train")
        assert loaded.to_list() == records


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), texts, st.booleans()), max_size=4), max_size=8))
def test_atomic_jsonl_round_trip(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.jsonl"
        write_atomic(path, jsonl_bytes(rows))
        assert read_jsonl(path) == rows
        assert [p.name for p in Path(tmp).iterdir()] == ["shard.jsonl"]
