"""Errors of ours: their message says what is wrong and the fix, so the user sees the message, not a traceback.

`user_errors()` wraps the plugin's hooks and the CLI commands: a `DominoError` becomes its message and
exit status 1 (`DOMINO_DEBUG=1` re-raises it with the traceback, for bug reports). Only the outermost wrapper
does so: a CLI command that loads a config through Axolotl (and so runs the plugin's wrapped `register`) still
receives the error itself and may handle it.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from collections.abc import Iterator
from contextlib import contextmanager


class DominoError(Exception):
    """Bad input or a failed stage, explained: shown to the user as its message alone."""


class ConfigError(DominoError, ValueError):
    """A setting that cannot work, named by its key with the fix.

    Also a `ValueError`, so that pydantic validators may raise it (pydantic turns only ValueErrors into
    validation errors) and callers that catch ValueError keep working."""


ERROR_PREFIX = "domino: error: "
DEBUG_HINT = "(DOMINO_DEBUG=1 shows the traceback)"
_depth: ContextVar[int] = ContextVar("domino_user_errors_depth", default=0)


@contextmanager
def user_errors() -> Iterator[None]:
    token = _depth.set(_depth.get() + 1)
    try:
        yield
    except DominoError as exc:
        if _depth.get() > 1 or os.environ.get("DOMINO_DEBUG", "") not in ("", "0"):
            raise
        raise SystemExit(f"{ERROR_PREFIX}{exc}\n{DEBUG_HINT}") from None
    finally:
        _depth.reset(token)
