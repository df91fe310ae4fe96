"""The 2-D projection of the embeddings."""

from __future__ import annotations

import numpy as np

from axolotl_domino.score.plots import project_2d

def test_projection_methods():
    x = np.random.default_rng(0).normal(size=(40, 12))
    coords, method = project_2d(x, "auto")
    assert coords.shape == (40, 2) and method == "t-SNE"
    assert project_2d(x, "pca")[1] == "PCA"
    assert project_2d(x[:4], "auto")[1] == "PCA"
    assert project_2d(x[:2]) is None
