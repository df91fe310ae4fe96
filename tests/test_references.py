"""Reading the reference file: every bad input gets the file, line and fix in its message."""

from __future__ import annotations

import json

import pytest

from axolotl_domino.files import DataFileError
from axolotl_domino.layout import Layout
from axolotl_domino.references import read_references, reference_token_ids, sample_text, write_indexed


def _write(tmp_path, content: bytes | str):
    path = tmp_path / "refs.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_reads_texts_in_order_and_drops_duplicates(tmp_path, caplog):
    path = _write(tmp_path, '{"text": "a"}\n\n{"text": "b"}\n{"text": "a"}\n')
    refs = read_references(path)
    assert refs.texts == ["a", "b"] and refs.duplicates_dropped == 1
    assert "dropped 1 duplicate" in caplog.text
    assert refs.sha256 != read_references(_write(tmp_path, '{"text": "b"}\n{"text": "a"}\n')).sha256


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "holds no references"),
        ('{"text": "a"}\n{"text": "b"\n', r"refs.jsonl:2: invalid JSON"),
        ('{"text": "a"}\n{"body": "b"}\n', r"refs.jsonl:2: no field 'text' \(keys: body\); set domino.references.field"),
        ('{"text": 3}\n', r"refs.jsonl:1: field 'text' is int, not a string"),
        ('["text"]\n', r"refs.jsonl:1: expected a JSON object"),
        ('{"text": "  "}\n', r"refs.jsonl:1: field 'text' is empty"),
        (b'{"text": "a"}\n{"text": "\xff"}\n', r"refs.jsonl:2: not valid UTF-8"),
    ],
)
def test_bad_files_name_the_line(tmp_path, content, match):
    with pytest.raises(DataFileError, match=match):
        read_references(_write(tmp_path, content))


def test_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        read_references(tmp_path / "none.jsonl")


def test_fewer_than_two_references_for_the_contrastive_term(tmp_path):
    path = _write(tmp_path, '{"text": "only one"}\n{"text": "only one"}\n')
    with pytest.raises(DataFileError, match="1 distinct reference.*num_sample_tokens: 0"):
        read_references(path, min_count=2)
    assert read_references(path, min_count=1).texts == ["only one"]


class _Tokenizer:
    """Character-level stand-in with the two calls reference_token_ids makes."""

    eos_token, eos_token_id = "</s>", 0
    chat_template = "x"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize=False):
        # like SmolLM2's template: a default system turn first
        return "<system>be nice</s>\n" + "".join(f"<{m['role']}>{m['content']}</s>\n" for m in messages)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_token_ids_end_with_eos_and_truncate():
    ids, truncated = reference_token_ids("abc", _Tokenizer(), "text", "user", 10)
    assert ids == [97, 98, 99, 0] and not truncated
    ids, truncated = reference_token_ids("abcdef", _Tokenizer(), "text", "user", 2)
    assert ids == [97, 98, 0] and truncated
    ids, _ = reference_token_ids("hi", _Tokenizer(), "chat", "user", 100)
    assert ids == [ord(c) for c in "<user>hi"] + [0]  # the turn alone, one EOS


def test_sample_text_inverts_the_chat_turn():
    tok = _Tokenizer()
    ids, _ = reference_token_ids("write a sort", tok, "chat", "user", 100)
    assert sample_text(ids[:-1], tok, "chat", "user") == "write a sort"
    assert sample_text([ord(c) for c in " plain "], tok, "text", "user") == "plain"


def test_chat_format_needs_a_template():
    tok = _Tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="format: chat needs a tokenizer with a chat template"):
        reference_token_ids("hi", tok, "chat", "user", 10)


def test_indexed_file_is_content_addressed(tmp_path):
    refs = read_references(_write(tmp_path, '{"text": "a"}\n{"text": "b"}\n'))
    path = write_indexed(refs, Layout(tmp_path / "out"))
    assert refs.sha256[:16] in path.name
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"text": "a", "ref_index": 0}, {"text": "b", "ref_index": 1}]
    assert not list((tmp_path / "out").glob("*.tmp-*"))
