"""axolotl-domino: DOMINO inductive domain-specific data synthesis as an Axolotl plugin.

Use it from a YAML with ``plugins: [axolotl_domino.DominoPlugin]`` and a ``domino:`` block.
"""

from __future__ import annotations

__version__ = "0.1.0"

try:
    from axolotl_domino.plugin import DominoPlugin
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    # Axolotl 0.19 logs and *skips* a plugin whose import raises ImportError, after which the
    # `domino:` block is silently dropped and the run trains on the wrong data. Any other
    # exception type stops the run, so re-raise as one with the fix in the message.
    raise RuntimeError(
        f"axolotl-domino is installed but cannot be imported ({exc}). "
        "Reinstall it in the environment that runs `axolotl` (`pip install axolotl-domino`)."
    ) from exc

__all__ = ["DominoPlugin", "__version__"]
