"""The file layer: the one reader of users' JSON Lines files, and the stage-key digest."""

from __future__ import annotations

import hashlib
import json

import pytest

from axolotl_domino.files import DataFileError, append_jsonl, digest, read_field, recover_journal


def _read(tmp_path, content: str, **kwargs):
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    return read_field(path, "text", "domino.x.path", "domino.x.field", **kwargs)


def test_values_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    assert _read(tmp_path, '{"text": "a"}\n\n  \n{"text": "b", "other": 1}\n') == [(1, "a"), (4, "b")]


def test_non_string_values_only_where_the_caller_allows_them(tmp_path):
    content = '{"text": ["assert f(1) == 2"]}\n'
    assert _read(tmp_path, content, strings=False) == [(1, ["assert f(1) == 2"])]
    with pytest.raises(DataFileError, match=r"in.jsonl:1: field 'text' is list, not a string; point domino.x.field"):
        _read(tmp_path, content)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", r"domino.x.path: .*in.jsonl holds no records"),
        ('{"body": "b"}\n', r"in.jsonl:1: no field 'text' \(keys: body\); set domino.x.field"),
        ('{"text": "a"}\n[1]\n', r"in.jsonl:2: expected a JSON object, got list"),
        ('{"text": "a"\n', r"in.jsonl:1: invalid JSON"),
    ],
)
def test_every_error_names_the_file_the_line_and_the_key(tmp_path, content, message):
    with pytest.raises(DataFileError, match=message):
        _read(tmp_path, content)


def test_missing_file_names_the_path_key(tmp_path):
    with pytest.raises(DataFileError, match=r"domino.x.path: .*nope.jsonl does not exist"):
        read_field(tmp_path / "nope.jsonl", "text", "domino.x.path", "domino.x.field")


def test_digest_is_the_short_sha256_of_canonical_json():
    """Stage keys on disk depend on it: changing it would invalidate every finished stage."""
    value = {"b": [1, 2], "a": "x"}
    assert digest(value) == hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
    assert digest(value) == digest({"a": "x", "b": [1, 2]})


def test_a_journal_torn_by_a_kill_keeps_its_complete_rows_and_the_next_append_starts_a_new_line(tmp_path):
    journal = tmp_path / "answers.jsonl.partial"
    assert recover_journal(journal) == []
    append_jsonl(journal, [{"index": 0}, {"index": 1}])
    with open(journal, "ab") as handle:  # a write cut off by kill -9
        handle.write(b'{"index": 2, "resp')
    assert recover_journal(journal) == [{"index": 0}, {"index": 1}]
    append_jsonl(journal, [{"index": 2}])
    assert recover_journal(journal) == [{"index": 0}, {"index": 1}, {"index": 2}]
