"""Files, the only place DOMINO keeps state: atomic writes, JSON Lines, content hashes.

Every file a stage writes goes through `write_atomic` (temporary name, fsync, rename, fsync of the
folder), so after a crash at any moment a path is either absent or complete. Every JSON Lines file
a *user* hands us (references, held-out samples, benchmark files) goes through `read_field`, so a
bad line gets the same kind of message wherever it is read: the file, the line, the key to change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from axolotl_domino.errors import DominoError


class DataFileError(DominoError, ValueError):
    """A user's JSON Lines file cannot be used; the message names the file, the line and the fix."""


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either absent or complete, even across a crash.

    On any error (e.g. disk full) the temporary file is removed and the error propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def remove_temporaries(directory: Path) -> int:
    """Delete leftover temporary files of crashed writers (call only when no writer is running)."""
    leftovers = list(directory.glob(".*.tmp-*"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)


def jsonl_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    """Canonical JSON Lines: one object per line, keys in insertion order, UTF-8, trailing newline."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file this package wrote (trusted: no per-line checks)."""
    # bytes.splitlines splits on \n and \r only; str.splitlines would also split on U+0085 or U+2028,
    # which json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    return read_jsonl_bytes(path.read_bytes())


def read_jsonl_bytes(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows durably: a journal of finished work that a killed run reads back with `recover_journal`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        handle.write(jsonl_bytes(rows))
        handle.flush()
        os.fsync(handle.fileno())


def recover_journal(path: Path) -> list[dict[str, Any]]:
    """The complete rows of an `append_jsonl` journal (none if absent), cutting off a line torn by a kill
    so that the next append starts on a line of its own."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        os.truncate(path, len(complete))
    return read_jsonl_bytes(complete)


def read_field(
    path: str | Path, field: str, path_key: str, field_key: str, what: str = "records", strings: bool = True
) -> list[tuple[int, Any]]:
    """(line number, value of `field`) for every non-blank line of a user's JSON Lines file.

    `path_key` and `field_key` are the config keys that named the file and the field: every error
    names them, with the file and the line. With `strings`, the field must hold a string.
    """
    path = Path(path).expanduser()
    hint = f"'{path}' must be JSON Lines: one object per line with a{' string' if strings else ''} field '{field}'"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{path_key}: {path} does not exist; {hint}.") from None
    except OSError as exc:
        raise DataFileError(f"{path_key}: cannot read {path} ({exc.strerror or exc}).") from None
    values: list[tuple[int, Any]] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{path}:{number}: not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8.") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}:{number}: invalid JSON ({exc.msg}, column {exc.colno}); {hint}.") from None
        if not isinstance(record, dict):
            raise DataFileError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}; {hint}.")
        if field not in record:
            keys = ", ".join(sorted(record)) or "none"
            raise DataFileError(
                f"{path}:{number}: no field '{field}' (keys: {keys}); set {field_key} to the key that holds the text."
            )
        value = record[field]
        if strings and not isinstance(value, str):
            raise DataFileError(
                f"{path}:{number}: field '{field}' is {type(value).__name__}, not a string; "
                f"point {field_key} at a text field."
            )
        values.append((number, value))
    if not values:
        raise DataFileError(f"{path_key}: {path} holds no {what}; {hint}.")
    return values


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def digest(value: Any) -> str:
    """The key of a stage's inputs: a short sha256 of their canonical JSON (one definition for every key)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
