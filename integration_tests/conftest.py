"""Fixtures of the end-to-end runs of the real `axolotl train` on the embedded SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _axolotl import MODEL_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Every test in this folder runs the real `axolotl` CLI: mark it `integration` (`-m "not integration"`)."""
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded model as a Hugging Face folder (cached: `make model` prepares the same folder)."""
    from axolotl_domino.embedded import prepare_model

    return prepare_model("smollm2-135m-instruct", MODEL_DIR)
