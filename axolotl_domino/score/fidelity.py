"""Fidelity to the domain: does the synthetic data look like real domain samples?

Against a held-out set of real samples when one is given, else against the references (then a copy of
the references looks "faithful": read it together with memorisation). MMD and Fréchet distance of
sentence embeddings, a classifier two-sample test (cross-validated ROC AUC; 0.5 = indistinguishable)
and the length distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


MIN_CLASSIFIER_PER_CLASS = 4  # the classifier two-sample test needs this many samples in each set


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.clip(d, 0.0, None)


def median_heuristic_bandwidth(x: np.ndarray, y: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """Median Euclidean distance between distinct points of the pooled sample (subsampled to `max_points`).
    Falls back to the mean nonzero distance, then 1.0, when the median is 0 (many duplicates)."""
    from scipy.spatial.distance import pdist

    pooled = np.concatenate([x, y]).astype(np.float64)
    if len(pooled) > max_points:
        pooled = pooled[np.random.default_rng(seed).choice(len(pooled), max_points, replace=False)]
    if len(pooled) < 2:
        return 1.0
    distances = pdist(pooled)
    median = float(np.median(distances))
    if median > 0:
        return median
    positive = distances[distances > 0]
    return float(positive.mean()) if len(positive) else 1.0


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None, seed: int = 0) -> dict[str, float] | None:
    """Maximum mean discrepancy between the samples x and y with the Gaussian kernel
    k(a, b) = exp(-||a - b||^2 / (2 sigma^2)), sigma = `bandwidth` or the median heuristic.

    MMD^2 is the biased (V-statistic) estimate mean k(x, x') + mean k(y, y') - 2 mean k(x, y), which is
    >= 0 and exactly 0 for identical samples; it is slightly positive even for two samples of the same
    distribution (bias ~ 1/n). Returns {"mmd2", "mmd" = sqrt(mmd2), "bandwidth"}; None if a set is empty.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        return None
    sigma = float(bandwidth) if bandwidth else median_heuristic_bandwidth(x, y, seed=seed)
    gamma = 1.0 / (2.0 * sigma * sigma)
    kxx = np.exp(-gamma * _squared_distances(x, x)).mean()
    kyy = np.exp(-gamma * _squared_distances(y, y)).mean()
    kxy = np.exp(-gamma * _squared_distances(x, y)).mean()
    mmd2 = max(float(kxx + kyy - 2.0 * kxy), 0.0)
    return {"mmd2": mmd2, "mmd": math.sqrt(mmd2), "bandwidth": sigma}


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float | None:
    """Fréchet distance between Gaussians fitted to x and y (as FID, on sentence embeddings):
    ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^(1/2)). The trace of the matrix square root is computed as
    the sum of square roots of the eigenvalues of S_x^(1/2) S_y S_x^(1/2) (symmetric PSD), which stays real
    and stable when n < d makes the covariances singular. 0 for identical sets. None if a set has < 2 items."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return None
    mean_diff = x.mean(0) - y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root_x = _psd_sqrt(cov_x)
    middle = root_x @ cov_y @ root_x
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    value = float(mean_diff @ mean_diff + np.trace(cov_x) + np.trace(cov_y) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def classifier_two_sample_auc(
    x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
) -> dict[str, Any] | None:
    """Classifier two-sample test: can a logistic regression tell x from y?

    The larger set is randomly subsampled to the size of the smaller one (balanced classes), features are
    standardised, and a stratified `folds`-fold cross-validation (fewer folds for small sets) scores every
    sample out of fold. Returns {"auc": ROC AUC of the pooled out-of-fold scores, "auc_fold_std", "folds",
    "n_per_class"}. AUC 0.5 = indistinguishable, 1.0 = perfectly separable (values a little below 0.5 are
    noise). None when a set has fewer than MIN_CLASSIFIER_PER_CLASS samples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    size = min(len(x), len(y))
    if size < MIN_CLASSIFIER_PER_CLASS:
        return None
    rng = np.random.default_rng(seed)
    x = x[np.sort(rng.choice(len(x), size, replace=False))]
    y = y[np.sort(rng.choice(len(y), size, replace=False))]
    features = np.concatenate([x, y])
    labels = np.concatenate([np.ones(size, dtype=int), np.zeros(size, dtype=int)])
    n_folds = max(2, min(folds, size // 2))
    scores = np.zeros(len(labels))
    fold_aucs = []
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(features, labels):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(features[train], labels[train])
        scores[test] = model.decision_function(features[test])
        fold_aucs.append(roc_auc_score(labels[test], scores[test]))
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "auc_fold_std": float(np.std(fold_aucs)),
        "folds": n_folds,
        "n_per_class": size,
    }


def _distribution(values: Sequence[float]) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "p10": float(q[0]),
        "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p90": float(q[4]), "max": float(v.max()),
    }


def length_stats(texts: Sequence[str]) -> dict[str, Any]:
    """Length distributions of a set: characters and whitespace-separated words (mean, std, min, p10, p25,
    median, p75, p90, max); None entries for an empty set."""
    return {
        "count": len(texts),
        "chars": _distribution([len(t) for t in texts]),
        "words": _distribution([len(t.split()) for t in texts]),
    }


def length_ks(a: Sequence[str], b: Sequence[str]) -> dict[str, float] | None:
    """Two-sample Kolmogorov-Smirnov test of the word-count distributions (statistic 0 = same, 1 = disjoint)."""
    if not a or not b:
        return None
    from scipy.stats import ks_2samp

    result = ks_2samp([len(t.split()) for t in a], [len(t.split()) for t in b])
    return {"statistic": float(result.statistic), "pvalue": float(result.pvalue)}


def fidelity(syn_emb: np.ndarray, target_emb: np.ndarray, synthetic: list[str], target: list[str],
              target_name: str, seed: int, notes: list[str]) -> dict[str, Any]:
    mmd = mmd_rbf(syn_emb, target_emb, seed=seed)
    frechet = frechet_distance(syn_emb, target_emb)
    classifier = classifier_two_sample_auc(syn_emb, target_emb, seed=seed)
    if mmd is None:
        notes.append(f"fidelity: MMD needs at least one synthetic and one {target_name} sample; null.")
    if frechet is None:
        notes.append(f"fidelity: Fréchet distance needs at least 2 synthetic and 2 {target_name} samples; null.")
    if classifier is None:
        notes.append(
            f"fidelity: the classifier two-sample test needs at least {MIN_CLASSIFIER_PER_CLASS} synthetic and "
            f"{MIN_CLASSIFIER_PER_CLASS} {target_name} samples; null."
        )
    return {
        "target": target_name,
        "mmd": None if mmd is None else mmd["mmd"],
        "mmd2": None if mmd is None else mmd["mmd2"],
        "mmd_bandwidth": None if mmd is None else mmd["bandwidth"],
        "frechet_distance": frechet,
        "classifier_auc": None if classifier is None else classifier["auc"],
        "classifier_auc_fold_std": None if classifier is None else classifier["auc_fold_std"],
        "classifier_folds": None if classifier is None else classifier["folds"],
        "classifier_n_per_class": None if classifier is None else classifier["n_per_class"],
        "length_ks_words": length_ks(synthetic, target),
    }
