"""Errors of ours: their message says what is wrong and the fix, so the user sees the message, not a traceback.

`user_errors()` wraps the plugin's hooks and the CLI commands: a `DominoError` becomes its message and
exit status 1 (`DOMINO_DEBUG=1` re-raises it with the traceback, for bug reports).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class DominoError(Exception):
    """Bad input or a failed stage, explained: shown to the user as its message alone."""


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except DominoError as exc:
        if os.environ.get("DOMINO_DEBUG", "") not in ("", "0"):
            raise
        raise SystemExit(f"domino: error: {exc}\n(DOMINO_DEBUG=1 shows the traceback)") from None
