"""Fidelity metrics (MMD, Fréchet, classifier two-sample test) and length statistics."""

from __future__ import annotations

import numpy as np
import pytest

from axolotl_domino.score.fidelity import classifier_two_sample_auc, frechet_distance, length_stats, mmd_rbf

def _clusters(seed=0, n=150, d=16, gap=6.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + gap / np.sqrt(d)


def test_mmd_of_a_set_with_itself_is_zero_and_of_separated_clusters_positive():
    x, far = _clusters()
    same = mmd_rbf(x, x)
    assert same["mmd2"] == pytest.approx(0.0, abs=1e-12) and same["bandwidth"] > 0
    near = mmd_rbf(x, np.random.default_rng(9).normal(size=x.shape))
    apart = mmd_rbf(x, far)
    assert apart["mmd"] > 0.3 and apart["mmd"] > 5 * near["mmd"]
    assert mmd_rbf(x, x[:0]) is None


def test_frechet_distance_known_answers():
    x = np.random.default_rng(0).normal(size=(60, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(8) / 4.0
    # Equal covariances: the distance is exactly the squared distance of the means.
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # n < d (singular covariances) stays finite and real.
    assert frechet_distance(x[:5], x[5:10]) >= 0.0
    assert frechet_distance(x[:1], x) is None


def test_classifier_auc_is_half_for_one_distribution_and_one_for_separated_clusters():
    rng = np.random.default_rng(3)
    same = classifier_two_sample_auc(rng.normal(size=(200, 8)), rng.normal(size=(300, 8)))
    assert abs(same["auc"] - 0.5) < 0.12
    assert same["n_per_class"] == 200 and same["folds"] == 5  # balanced: the larger set is subsampled
    x, far = _clusters()
    assert classifier_two_sample_auc(x, far)["auc"] > 0.98
    assert classifier_two_sample_auc(x[:3], far) is None


def test_length_stats_by_hand():
    stats = length_stats(["a b", "a b c d", "abcdef"])
    assert stats["count"] == 3
    assert stats["words"]["mean"] == pytest.approx(7 / 3) and stats["words"]["max"] == 4
    assert stats["chars"]["mean"] == pytest.approx((3 + 7 + 6) / 3) and stats["chars"]["median"] == 6
    assert length_stats([])["words"] is None


