"""The scorecard: is the synthetic data diverse, in-domain, and not a copy of the references?

Three groups of metrics, all computed on (at most `max_samples` of) each set:

- diversity of the synthetic set (and, for comparison, of the references / held-out set):
  distinct-1/2/3, self-BLEU, the embedding Vendi score, mean pairwise cosine, exact duplicates;
- memorisation of the references: nearest-reference cosine of each synthetic sample, the share
  above `memorization_threshold`, exact copies, the longest common substring with any reference;
- fidelity to the domain, against a held-out set of real domain samples when one is given, else
  against the references themselves (then a copy of the references looks "faithful": read it
  together with memorisation): MMD and Fréchet distance of sentence embeddings, a classifier
  two-sample test (cross-validated ROC AUC; 0.5 = indistinguishable) and the length distributions.

`scorecard()` writes `scorecard.json`, `scorecard.md`, `projection.png` (2-D map of the embeddings,
like the DOMINO paper's Figure 3) and `lengths.png` into a folder. Every metric is a pure function
of texts or embedding matrices, usable on its own. A metric that needs more samples than a set has
is reported as null with a note; nothing raises on tiny or empty sets.

Text metrics (distinct-n, self-BLEU) use `tokenize()`: lowercased words and single punctuation
marks. Embedding metrics use L2-normalised sentence embeddings (`axolotl_domino.embed`).
"""

from __future__ import annotations

import bisect
import io
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from axolotl_domino.args import TSNE_MAX_POINTS, TSNE_MIN_POINTS, ScoreConfig
from axolotl_domino.embed import Embedder, l2_normalize, load_embedder
from axolotl_domino.shards import write_atomic

LOG = logging.getLogger("axolotl.integrations.domino.score")

JSON_FILE = "scorecard.json"
MARKDOWN_FILE = "scorecard.md"
PROJECTION_FILE = "projection.png"
LENGTHS_FILE = "lengths.png"
SCHEMA_VERSION = 1

# Cost bounds of the longest-common-substring search (a suffix automaton over the references).
LCS_MAX_REFERENCE_CHARS = 500_000  # references beyond this are subsampled (the report says how many were used)
LCS_MAX_QUERY_CHARS = 20_000  # each synthetic text is searched up to this many characters
# t-SNE is used for the projection when the pooled number of points is in this range (`projection: auto`).
MIN_CLASSIFIER_PER_CLASS = 4  # the classifier two-sample test needs this many samples in each set


class HeldoutError(ValueError):
    """The held-out file cannot be used; the message names the file, the line and the fix."""


def load_heldout(path: str | Path, field: str = "text") -> list[str]:
    """Read the held-out JSON Lines file: one object per line with a string `field` (blank lines skipped)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HeldoutError(f"domino.score.heldout_path: cannot read {path} ({exc.strerror or exc}).") from None
    texts: list[str] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HeldoutError(f"{path}:{number}: not a UTF-8 JSON object ({exc}); one JSON object per line.") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise HeldoutError(
                f"{path}:{number}: no string field '{field}' (found: {keys}); set domino.score.heldout_field."
            )
        texts.append(record[field])
    if not texts:
        raise HeldoutError(f"domino.score.heldout_path: {path} holds no samples.")
    return texts


# --------------------------------------------------------------------------------------------
# Text diversity
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens (runs of letters/digits/underscore) and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """distinct-n (Li et al., 2016) of a set: (number of unique n-grams) / (total number of n-grams),
    pooled over all texts of the set (n-grams do not cross text boundaries). In (0, 1]; higher is more
    varied. None when the set has no n-gram at all."""
    unique: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(tokenize(text), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else None


def self_bleu(texts: Sequence[str], max_order: int = 4) -> float | None:
    """Self-BLEU (Zhu et al., 2018): the mean over texts i of sentence-BLEU(text_i, references = all other texts).

    Sentence BLEU as sacreBLEU's `sentence_bleu` computes it on our tokens, scaled to [0, 1]: clipped n-gram
    precisions for n = 1..max_order (each n-gram's count clipped by its highest count in any single other
    text), "exp" smoothing of zero precisions, effective order for short texts, brevity penalty against the
    closest other-text length (ties: the shorter). 1 = every text is repeated elsewhere in the set, ~0 = no
    shared n-grams. Exact, in O(total n-grams): per n-gram, the two highest per-text counts are kept, so the
    best count among the *other* texts is known without comparing every pair. None for fewer than 2 texts.
    """
    if len(texts) < 2:
        return None
    tokens = [tokenize(text) for text in texts]
    counts = [[Counter(_ngrams(toks, n)) for n in range(1, max_order + 1)] for toks in tokens]
    # Per order: n-gram -> (highest count, its text, second highest count).
    best: list[dict[tuple[str, ...], list[int]]] = [{} for _ in range(max_order)]
    for index, per_order in enumerate(counts):
        for order, counter in enumerate(per_order):
            table = best[order]
            for gram, count in counter.items():
                entry = table.get(gram)
                if entry is None:
                    table[gram] = [count, index, 0]
                elif count > entry[0]:
                    entry[2], entry[0], entry[1] = entry[0], count, index
                elif count > entry[2]:
                    entry[2] = count
    lengths = [len(toks) for toks in tokens]
    length_counts = Counter(lengths)
    unique_lengths = sorted(length_counts)

    def closest_other_length(length: int) -> int:
        if length_counts[length] >= 2:
            return length
        pos = bisect.bisect_left(unique_lengths, length)
        below = unique_lengths[pos - 1] if pos > 0 else None
        above_pos = pos + 1 if pos < len(unique_lengths) and unique_lengths[pos] == length else pos
        above = unique_lengths[above_pos] if above_pos < len(unique_lengths) else None
        if below is None:
            return above  # type: ignore[return-value]
        if above is None or length - below <= above - length:
            return below
        return above

    scores = []
    for index, per_order in enumerate(counts):
        correct = [0] * max_order
        total = [0] * max_order
        for order, counter in enumerate(per_order):
            table = best[order]
            for gram, count in counter.items():
                top, top_index, second = table[gram]
                other = second if top_index == index else top
                correct[order] += min(count, other)
                total[order] += count
        scores.append(_sentence_bleu(correct, total, lengths[index], closest_other_length(lengths[index])))
    return float(np.mean(scores))


def _sentence_bleu(correct: list[int], total: list[int], sys_len: int, ref_len: int) -> float:
    """BLEU in [0, 1] from n-gram statistics, with sacreBLEU's sentence-level choices (exp smoothing, effective
    order)."""
    if not any(correct):
        return 0.0
    brevity = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    log_precisions = []
    smooth = 1.0
    for hits, count in zip(correct, total):
        if count == 0:
            break
        if hits == 0:
            smooth *= 2
            log_precisions.append(math.log(1.0 / (smooth * count)))
        else:
            log_precisions.append(math.log(hits / count))
    return brevity * math.exp(sum(log_precisions) / len(log_precisions))


def duplicate_rate(texts: Sequence[str]) -> float | None:
    """Share of texts that repeat an earlier text of the set exactly (after trimming whitespace). None if empty."""
    if not texts:
        return None
    return 1.0 - len({text.strip() for text in texts}) / len(texts)


# --------------------------------------------------------------------------------------------
# Embedding diversity
# --------------------------------------------------------------------------------------------


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    return l2_normalize(np.asarray(embeddings, dtype=np.float64)).astype(np.float64)


def vendi_score(embeddings: np.ndarray) -> float | None:
    """Vendi score (Friedman & Dieng, 2023) with the cosine-similarity kernel: exp(-sum_i l_i log l_i) for l_i
    the eigenvalues of K/n, K[i, j] = cos(x_i, x_j). The "effective number of distinct items": 1 for n identical
    items, n for n mutually orthogonal items. Computed from the d x d matrix X^T X / n when d < n (same nonzero
    eigenvalues). None for an empty set."""
    x = _unit_rows(embeddings)
    n = len(x)
    if n == 0:
        return None
    gram = (x @ x.T) if n <= x.shape[1] else (x.T @ x)
    eigenvalues = np.clip(np.linalg.eigvalsh(gram / n), 0.0, None)
    if eigenvalues.sum() <= 0:
        return None
    eigenvalues = eigenvalues / eigenvalues.sum()
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def mean_pairwise_cosine(embeddings: np.ndarray) -> float | None:
    """Mean cosine similarity over all pairs i != j of the set (lower = more varied). None for fewer than 2 items.
    O(n d): sum_{i != j} <x_i, x_j> = ||sum_i x_i||^2 - sum_i ||x_i||^2."""
    x = _unit_rows(embeddings)
    n = len(x)
    if n < 2:
        return None
    total = x.sum(axis=0)
    return float((total @ total - np.einsum("ij,ij->", x, x)) / (n * (n - 1)))


# --------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------


def nearest_cosines(queries: np.ndarray, keys: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: the highest cosine similarity to any key row, and that key's index."""
    q, k = _unit_rows(queries), _unit_rows(keys)
    if len(q) == 0 or len(k) == 0:
        return np.zeros(0), np.zeros(0, dtype=int)
    best, where = [], []
    for start in range(0, len(q), chunk):
        sims = q[start : start + chunk] @ k.T
        where.append(sims.argmax(axis=1))
        best.append(sims.max(axis=1))
    return np.concatenate(best), np.concatenate(where)


class SuffixAutomaton:
    """Suffix automaton of a text: `longest_common_substring(query)` in O(len(query)) after an O(len(text)) build.

    Several documents are indexed at once by joining them with a separator character that is removed from
    every query, so no match crosses a document boundary.
    """

    SEPARATOR = "\x00"

    def __init__(self, documents: Sequence[str]):
        text = self.SEPARATOR.join(doc.replace(self.SEPARATOR, "") for doc in documents)
        nxt: list[dict[str, int]] = [{}]
        link = [-1]
        length = [0]
        last = 0
        for ch in text:
            cur = len(length)
            nxt.append({})
            length.append(length[last] + 1)
            link.append(0)
            p = last
            while p != -1 and ch not in nxt[p]:
                nxt[p][ch] = cur
                p = link[p]
            if p != -1:
                q = nxt[p][ch]
                if length[p] + 1 == length[q]:
                    link[cur] = q
                else:
                    clone = len(length)
                    nxt.append(dict(nxt[q]))
                    length.append(length[p] + 1)
                    link.append(link[q])
                    while p != -1 and nxt[p].get(ch) == q:
                        nxt[p][ch] = clone
                        p = link[p]
                    link[q] = clone
                    link[cur] = clone
            last = cur
        self._next, self._link, self._length = nxt, link, length

    def longest_common_substring(self, query: str) -> int:
        """Length in characters of the longest substring of `query` that occurs in one indexed document."""
        nxt, link, length = self._next, self._link, self._length
        state = matched = best = 0
        for ch in query.replace(self.SEPARATOR, ""):
            while state and ch not in nxt[state]:
                state = link[state]
                matched = length[state]
            if ch in nxt[state]:
                state = nxt[state][ch]
                matched += 1
                if matched > best:  # noqa: PLR1730 - hot loop, cheaper than max()
                    best = matched
            else:
                state = matched = 0
        return best


def longest_common_substrings(
    queries: Sequence[str],
    references: Sequence[str],
    max_reference_chars: int = LCS_MAX_REFERENCE_CHARS,
    max_query_chars: int = LCS_MAX_QUERY_CHARS,
    seed: int = 0,
) -> tuple[list[int], int]:
    """For each query, the length (characters) of its longest common substring with any single reference.

    Cost is bounded: references are randomly subsampled (seeded) to at most `max_reference_chars` characters in
    all, and each query is searched up to `max_query_chars` characters. Returns (lengths, references used).
    """
    refs = list(references)
    if sum(len(r) for r in refs) > max_reference_chars:
        order = np.random.default_rng(seed).permutation(len(refs))
        kept, used = [], 0
        for i in order:
            if used + len(refs[i]) > max_reference_chars:
                continue
            kept.append(int(i))
            used += len(refs[i])
        refs = [refs[i] for i in sorted(kept)]
    if not refs or not queries:
        return [0] * len(queries), len(refs)
    automaton = SuffixAutomaton(refs)
    return [automaton.longest_common_substring(q[:max_query_chars]) for q in queries], len(refs)


# --------------------------------------------------------------------------------------------
# Fidelity
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def project_2d(embeddings: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str] | None:
    """2-D coordinates of the rows, and the method used ("t-SNE" or "PCA"). None for fewer than 3 rows.

    `auto` picks t-SNE for TSNE_MIN_POINTS..TSNE_MAX_POINTS rows: it keeps local neighbourhoods, so clusters,
    coverage and outliers show like the DOMINO paper's Figure 3; it runs on the first 50 principal components
    (init PCA, perplexity min(30, (n-1)/3)), seconds to tens of seconds on a CPU at that size. Outside that
    range `auto` is PCA: linear, fast at any size, global distances comparable. `tsne`/`pca` force one.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n < 3:
        return None
    from sklearn.decomposition import PCA

    use_tsne = method == "tsne" or (method == "auto" and TSNE_MIN_POINTS <= n <= TSNE_MAX_POINTS)
    if use_tsne and n >= 5:
        from sklearn.manifold import TSNE

        reduced = PCA(n_components=min(50, n, x.shape[1]), random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(reduced), "t-SNE"
    components = min(2, n, x.shape[1])
    coords = PCA(n_components=components, random_state=seed).fit_transform(x)
    if components < 2:
        coords = np.column_stack([coords, np.zeros(n)])
    return coords, "PCA"


_STYLE = {  # set name -> (colour, marker size, alpha, z-order)
    "synthetic": ("#1f77b4", 12, 0.6, 1),
    "held-out": ("#2ca02c", 18, 0.7, 2),
    "references": ("#d62728", 40, 0.95, 3),
}


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _plot_subsample(groups: dict[str, np.ndarray], budget: int, seed: int) -> dict[str, np.ndarray]:
    """Shrink the groups to `budget` points in all: references are kept whole (up to the budget), the other
    groups are subsampled in proportion to their sizes."""
    total = sum(len(e) for e in groups.values())
    if total <= budget:
        return groups
    rng = np.random.default_rng(seed)
    keep_refs = min(len(groups.get("references", ())), budget // 2)
    others = {name: e for name, e in groups.items() if name != "references"}
    other_total = sum(len(e) for e in others.values())
    out = {}
    for name, emb in groups.items():
        share = keep_refs if name == "references" else int((budget - keep_refs) * len(emb) / max(1, other_total))
        share = max(min(share, len(emb)), min(1, len(emb)))
        out[name] = emb[np.sort(rng.choice(len(emb), share, replace=False))] if share < len(emb) else emb
    return out


def projection_png(groups: dict[str, np.ndarray], method: str = "auto", seed: int = 0) -> tuple[bytes, str | None]:
    """PNG of the 2-D projection of every group's embeddings (fitted jointly); returns (png, method used).

    Unless `method` is "pca", a random subset of at most TSNE_MAX_POINTS points is drawn (all references
    first), so the map is a t-SNE at any set size; the legend gives the number of points shown.
    """
    from matplotlib.figure import Figure

    sizes = {name: len(emb) for name, emb in groups.items()}
    if method != "pca":
        groups = _plot_subsample(groups, TSNE_MAX_POINTS, seed)
    names = [name for name, emb in groups.items() if len(emb)]
    stacked = np.concatenate([groups[name] for name in names]) if names else np.zeros((0, 1))
    projected = project_2d(stacked, method, seed)
    figure = Figure(figsize=(6.4, 5.6))
    axes = figure.add_subplot()
    if projected is None:
        axes.text(0.5, 0.5, "too few samples for a projection (< 3)", ha="center", va="center")
        axes.set_axis_off()
        return _png(figure), None
    coords, used = projected
    start = 0
    for name in names:
        count = len(groups[name])
        colour, size, alpha, order = _STYLE.get(name, ("#7f7f7f", 12, 0.6, 1))
        part = coords[start : start + count]
        label = f"{name} ({count})" if count == sizes[name] else f"{name} ({count} of {sizes[name]})"
        axes.scatter(part[:, 0], part[:, 1], s=size, c=colour, alpha=alpha, zorder=order, label=label,
                     edgecolors="black" if name == "references" else "none", linewidths=0.4)
        start += count
    axes.set_title(f"{used} of sentence embeddings")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="best", fontsize=8)
    return _png(figure), used


def lengths_png(groups: dict[str, Sequence[str]]) -> bytes:
    """PNG of the word-count histograms (densities, shared bins) of every group."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    counts = {name: [len(t.split()) for t in texts] for name, texts in groups.items() if texts}
    if not counts:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center")
        axes.set_axis_off()
        return _png(figure)
    pooled = np.concatenate([np.asarray(v, dtype=float) for v in counts.values()])
    bins = np.histogram_bin_edges(pooled, bins=min(40, max(5, len(np.unique(pooled)))))
    for name, values in counts.items():
        colour = _STYLE.get(name, ("#7f7f7f",))[0]
        axes.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=colour,
                  label=f"{name} (n={len(values)}, mean {np.mean(values):.0f})")
        axes.hist(values, bins=bins, density=True, histtype="step", color=colour)
    axes.set_xlabel("words per sample")
    axes.set_ylabel("density")
    axes.legend(fontsize=8)
    return _png(figure)


# --------------------------------------------------------------------------------------------
# The scorecard
# --------------------------------------------------------------------------------------------


def _subsample(texts: Sequence[str], limit: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return [texts[i] for i in np.sort(rng.choice(len(texts), limit, replace=False))]


def _diversity(texts: list[str], embeddings: np.ndarray) -> dict[str, float | None]:
    return {
        "n": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "self_bleu": self_bleu(texts),
        "vendi_score": vendi_score(embeddings),
        "mean_pairwise_cosine": mean_pairwise_cosine(embeddings),
        "duplicate_rate": duplicate_rate(texts),
    }


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _memorization(
    synthetic: list[str], syn_emb: np.ndarray, references: list[str], ref_emb: np.ndarray,
    threshold: float, seed: int, notes: list[str],
) -> dict[str, Any]:
    result: dict[str, Any] = {"threshold": threshold}
    if not synthetic or not references:
        notes.append("memorization: needs at least one synthetic sample and one reference; reported as null.")
        result.update(nearest_reference_cosine=None, share_above_threshold=None, exact_copies=None,
                      exact_copy_rate=None, longest_common_substring=None, closest_pairs=[])
        return result
    cosines, nearest = nearest_cosines(syn_emb, ref_emb)
    reference_set = {r.strip() for r in references}
    copies = sum(1 for s in synthetic if s.strip() in reference_set)
    lcs, used = longest_common_substrings(synthetic, references, seed=seed)
    if used < len(references):
        notes.append(
            f"memorization: longest common substring searched in {used} of {len(references)} references "
            f"(capped at {LCS_MAX_REFERENCE_CHARS:,} characters)."
        )
    fractions = [length / max(1, len(text)) for length, text in zip(lcs, synthetic)]
    order = np.argsort(-cosines)[:3]
    result.update(
        nearest_reference_cosine={
            "mean": float(cosines.mean()), "median": float(np.median(cosines)),
            "p90": float(np.quantile(cosines, 0.9)), "max": float(cosines.max()),
        },
        share_above_threshold=float((cosines > threshold).mean()),
        exact_copies=copies,
        exact_copy_rate=copies / len(synthetic),
        longest_common_substring={
            "mean_chars": float(np.mean(lcs)), "max_chars": int(np.max(lcs)),
            "mean_fraction": float(np.mean(fractions)), "max_fraction": float(np.max(fractions)),
            "references_searched": used,
        },
        closest_pairs=[
            {
                "cosine": float(cosines[i]),
                "synthetic": _short(synthetic[i]),
                "reference": _short(references[nearest[i]]),
            }
            for i in order
        ],
    )
    return result


def _fidelity(syn_emb: np.ndarray, target_emb: np.ndarray, synthetic: list[str], target: list[str],
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


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def scorecard(
    synthetic: list[str],
    references: list[str],
    heldout: list[str] | None,
    settings: ScoreConfig,
    out_dir: Path,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Compute every metric, write scorecard.json, scorecard.md, projection.png and lengths.png into `out_dir`
    (each written atomically), and return the scorecard dict (the content of scorecard.json).

    Each set is subsampled to `settings.max_samples` (seeded). Fidelity is measured against `heldout` when it
    is non-empty, else against `references` (noted in the report). `embedder` defaults to
    `load_embedder(settings.embedding_model)`.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(settings.seed)
    notes: list[str] = []
    totals = {"synthetic": len(synthetic), "references": len(references), "held-out": len(heldout or [])}
    syn = _subsample([str(t) for t in synthetic], settings.max_samples, rng)
    ref = _subsample([str(t) for t in references], settings.max_samples, rng)
    held = _subsample([str(t) for t in heldout], settings.max_samples, rng) if heldout else None
    for name, kept in (("synthetic", syn), ("references", ref), ("held-out", held)):
        if kept is not None and len(kept) < totals[name]:
            notes.append(f"{name}: a random {len(kept)} of {totals[name]} samples are scored (max_samples).")
    if len(syn) < 3:
        notes.append(f"synthetic: only {len(syn)} sample(s); metrics that need more are null.")

    if embedder is None:
        embedder = load_embedder(settings.embedding_model)
    syn_emb, ref_emb = embedder.encode(syn), embedder.encode(ref)
    held_emb = embedder.encode(held) if held else None

    if held:
        target_name, target, target_emb = "held-out", held, held_emb
    else:
        target_name, target, target_emb = "references", ref, ref_emb
        notes.append(
            "fidelity: no held-out set (domino.score.heldout_path), so fidelity is measured against the references "
            "themselves: copying them would score as faithful; read it together with memorization."
        )

    diversity = {"synthetic": _diversity(syn, syn_emb), "references": _diversity(ref, ref_emb)}
    if held:
        diversity["held-out"] = _diversity(held, held_emb)
    if 2 <= len(ref) < len(syn):
        # distinct-n, self-BLEU and Vendi depend on the set size: a random synthetic subset as large as the
        # references is the like-for-like comparison.
        pick = np.sort(rng.choice(len(syn), len(ref), replace=False))
        diversity["synthetic_matched"] = _diversity([syn[i] for i in pick], syn_emb[pick])
    if len(syn) < 2:
        notes.append("diversity: self-BLEU and mean pairwise cosine need at least 2 samples; null.")

    groups_emb = {"synthetic": syn_emb, "references": ref_emb}
    groups_txt = {"synthetic": syn, "references": ref}
    if held:
        groups_emb["held-out"], groups_txt["held-out"] = held_emb, held
    projection_bytes, projection_method = projection_png(groups_emb, settings.projection, settings.seed)

    result = {
        "schema_version": SCHEMA_VERSION,
        "embedding_model": getattr(embedder, "name", type(embedder).__name__),
        "fidelity_target": target_name,
        "counts": {name: {"total": totals[name], "scored": len(kept or [])}
                   for name, kept in (("synthetic", syn), ("references", ref), ("held-out", held))},
        "settings": settings.model_dump(),
        "diversity": diversity,
        "memorization": _memorization(syn, syn_emb, ref, ref_emb, settings.memorization_threshold, settings.seed,
                                      notes),
        "fidelity": _fidelity(syn_emb, target_emb, syn, target, target_name, settings.seed, notes),
        "lengths": {name: length_stats(texts) for name, texts in groups_txt.items()},
        "plots": {"projection": PROJECTION_FILE, "projection_method": projection_method, "lengths": LENGTHS_FILE},
        "notes": notes,
    }
    result = _clean(result)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / PROJECTION_FILE, projection_bytes)
    write_atomic(out_dir / LENGTHS_FILE, lengths_png(groups_txt))
    write_atomic(out_dir / MARKDOWN_FILE, render_markdown(result).encode("utf-8"))
    write_atomic(out_dir / JSON_FILE, (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    LOG.info("scorecard written to %s", out_dir / MARKDOWN_FILE)
    return result


def run_scorecard(
    settings: ScoreConfig, synthetic: list[str], references: list[str], out_dir: Path,
    embedder: Embedder | None = None,
) -> dict[str, Any] | None:
    """`scorecard()` with the held-out set read from `settings.heldout_path`; None when `settings.enabled` is off."""
    if not settings.enabled:
        return None
    heldout = load_heldout(settings.heldout_path, settings.heldout_field) if settings.heldout_path else None
    return scorecard(synthetic, references, heldout, settings, out_dir, embedder=embedder)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_DIVERSITY_ROWS = [
    ("distinct_1", "distinct-1", "unique words / words; higher = richer vocabulary (falls as the set grows)"),
    ("distinct_2", "distinct-2", "unique word pairs / pairs; higher = less repeated phrasing"),
    ("distinct_3", "distinct-3", "unique word triples / triples; higher = less repeated phrasing"),
    ("self_bleu", "self-BLEU", "n-gram overlap of each sample with the rest (0-1); lower = more diverse"),
    ("vendi_score", "Vendi score", "effective number of distinct samples (1 = all the same, max = n)"),
    ("mean_pairwise_cosine", "mean pairwise cosine", "average embedding similarity; lower = more varied meaning"),
    ("duplicate_rate", "exact duplicates", "share of samples that repeat another one verbatim; should be ~0"),
]


def render_markdown(card: dict[str, Any]) -> str:
    """The human-readable scorecard: one table per group, one line per metric saying how to read it."""
    counts = card["counts"]
    sets = [name for name in ("synthetic", "synthetic_matched", "references", "held-out") if name in card["diversity"]]
    headers = [
        f"synthetic (random {card['diversity'][name]['n']:,})" if name == "synthetic_matched"
        else f"{name} ({card['diversity'][name]['n']:,})"
        for name in sets
    ]
    target = card["fidelity_target"]
    lines = [
        "# DOMINO synthetic data scorecard",
        "",
        f"Scored {counts['synthetic']['scored']:,} synthetic sample(s) against {counts['references']['scored']:,} "
        f"reference(s)" + (f" and {counts['held-out']['scored']:,} held-out sample(s)" if target == "held-out" else "")
        + f". Embeddings: `{card['embedding_model']}`. Fidelity is measured against the **{target}**.",
        "",
        "## Diversity (is the synthetic data varied?)",
        "",
        "| metric | " + " | ".join(headers) + " | how to read |",
        "| --- | " + " | ".join("---:" for _ in sets) + " | --- |",
    ]
    for key, label, hint in _DIVERSITY_ROWS:
        values = " | ".join(_fmt(card["diversity"][name][key]) for name in sets)
        lines.append(f"| {label} | {values} | {hint} |")
    lines += [
        "",
        "Compare synthetic with the real data at the same size (distinct-n falls, self-BLEU and Vendi rise as a set "
        "grows" + (", hence the random subset column" if "synthetic_matched" in sets else "")
        + "): clearly lower diversity than the real data means mode collapse.",
        "",
    ]

    mem = card["memorization"]
    nearest = mem.get("nearest_reference_cosine") or {}
    lcs = mem.get("longest_common_substring") or {}
    threshold = mem["threshold"]
    rows = [
        ("nearest-reference cosine, mean", nearest.get("mean"), "typical similarity to the closest reference"),
        ("nearest-reference cosine, median", nearest.get("median"), "half the samples are closer than this"),
        ("nearest-reference cosine, p90", nearest.get("p90"), "the closest 10% of samples are above this"),
        ("nearest-reference cosine, max", nearest.get("max"), "1.0 = some sample means exactly what a reference does"),
        (f"share with cosine > {threshold:g}", mem.get("share_above_threshold"),
         "near copies of a reference; should be small"),
        ("exact copies", mem.get("exact_copies"), "samples identical to a reference; should be 0"),
        ("longest common substring, mean (chars)", lcs.get("mean_chars"),
         "typical longest verbatim stretch shared with a reference"),
        ("longest common substring, max (chars)", lcs.get("max_chars"), "the longest verbatim stretch found"),
        ("longest common substring / sample length, max", lcs.get("max_fraction"),
         "1.0 = some sample is wholly contained in a reference"),
    ]
    lines += ["## Memorization (is it copying the references?)", "", "| metric | value | how to read |",
              "| --- | ---: | --- |"]
    lines += [f"| {label} | {_fmt(value)} | {hint} |" for label, value, hint in rows]
    if mem.get("closest_pairs"):
        lines += ["", "Closest synthetic/reference pairs:", ""]
        for pair in mem["closest_pairs"]:
            lines.append(f"- cosine {pair['cosine']:.3f}: “{pair['synthetic']}” ↔ “{pair['reference']}”")
    lines.append("")

    fid = card["fidelity"]
    ks = fid.get("length_ks_words") or {}
    rows = [
        ("classifier AUC", fid.get("classifier_auc"),
         f"0.5 = a classifier cannot tell synthetic from {target} (good; a little below 0.5 is noise); "
         "1.0 = trivially separable"),
        ("classifier AUC, std over folds", fid.get("classifier_auc_fold_std"), "noise of the AUC above"),
        ("MMD (RBF)", fid.get("mmd"), "distance of the embedding distributions; 0 = same, lower is better"),
        ("Fréchet distance", fid.get("frechet_distance"),
         "distance of Gaussian fits of the embeddings (like FID); lower is better"),
        ("length KS statistic (words)", ks.get("statistic"), "0 = same length distribution, 1 = disjoint"),
    ]
    lines += [f"## Fidelity (does it look like the {target}?)", "", "| metric | value | how to read |",
              "| --- | ---: | --- |"]
    lines += [f"| {label} | {_fmt(value)} | {hint} |" for label, value, hint in rows]
    lines += [
        "",
        "MMD and Fréchet distance depend on the embedder and the set sizes: compare runs scored the same way.",
        "",
    ]

    lines += [
        "## Lengths",
        "",
        "| set | chars mean | chars std | words mean | words std | words median | words p10-p90 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, stats in card["lengths"].items():
        chars, words = stats["chars"] or {}, stats["words"] or {}
        spread = f"{_fmt(words.get('p10'), 0)}-{_fmt(words.get('p90'), 0)}" if words else "n/a"
        lines.append(
            f"| {name} | {_fmt(chars.get('mean'), 1)} | {_fmt(chars.get('std'), 1)} | {_fmt(words.get('mean'), 1)} | "
            f"{_fmt(words.get('std'), 1)} | {_fmt(words.get('median'), 0)} | {spread} |"
        )
    plots = card["plots"]
    method = plots.get("projection_method") or "no projection"
    lines += [
        "",
        "## Plots",
        "",
        f"![{method} of the embeddings]({plots['projection']})",
        "",
        (
            f"{method} map of the sentence embeddings: synthetic points should spread over the whole region of the "
            "real data, not sit on top of the references only, nor off to one side."
        ),
        "",
        f"![word-count histograms]({plots['lengths']})",
        "",
    ]
    if card["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in card["notes"]] + [""]
    return "\n".join(lines)
