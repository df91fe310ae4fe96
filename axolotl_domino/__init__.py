"""axolotl-domino: DOMINO inductive domain-specific data synthesis as an Axolotl plugin.

Use it from a YAML with ``plugins: [axolotl_domino.DominoPlugin]`` and a ``domino:`` block.

``DominoPlugin`` is imported on first access, so that a submodule used on its own (the GGUF
converter, the scorecard) does not pull Axolotl in through this package.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

__version__ = importlib.metadata.version("axolotl-domino")
__all__ = ["DominoPlugin", "__version__"]


def __getattr__(name: str) -> Any:
    if name != "DominoPlugin":
        raise AttributeError(f"module 'axolotl_domino' has no attribute {name!r}")
    try:
        from axolotl_domino.plugin import DominoPlugin
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        # Axolotl 0.19 logs and *skips* a plugin whose loading raises ImportError, after which the
        # `domino:` block is silently dropped and the run trains on the wrong data. Any other
        # exception type stops the run, so re-raise as one with the fix in the message.
        raise RuntimeError(
            f"axolotl-domino is installed but cannot be imported ({exc}). "
            "Reinstall it in the environment that runs `axolotl` (`pip install axolotl-domino`)."
        ) from exc
    return DominoPlugin
