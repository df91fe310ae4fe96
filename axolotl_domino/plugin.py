"""`DominoPlugin`: wires Axolotl's hooks to the DOMINO stages. No stage logic lives here.

Every hook returns early when the YAML has no `domino:` block, so listing the plugin is harmless.
Heavy and Axolotl-internal imports stay inside hook bodies: importing `axolotl.train` or
`axolotl.core.builders` at module level would freeze Axolotl's training-args mixins before the
plugin is registered.
"""

from __future__ import annotations

import logging
from typing import Any

from axolotl.integrations.base import BasePlugin

LOG = logging.getLogger("axolotl_domino")


class DominoPlugin(BasePlugin):
    """Axolotl plugin for DOMINO inductive domain-specific data synthesis."""

    def get_input_args(self) -> str:
        return "axolotl_domino.args.DominoArgs"

    def register(self, cfg: dict[str, Any]) -> None:
        """Runs on the raw YAML before validation: the only point where GPU-only defaults can be undone."""
        domino = cfg.get("domino")
        if not domino:
            return
        from axolotl_domino.cpu import apply_cpu_defaults, cuda_available

        if domino.get("cpu_safe_defaults", True) and not cuda_available():
            apply_cpu_defaults(cfg)

    def load_datasets(self, cfg, preprocess: bool = False):
        """First hook after normalisation, on every rank, before any dataset or model is loaded."""
        if not cfg.get("domino"):
            return None
        from axolotl_domino.cpu import cpu_device_map, cuda_available

        if cfg.domino.cpu_safe_defaults and not cuda_available():
            cpu_device_map(cfg)
        return None
