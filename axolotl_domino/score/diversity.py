"""Diversity of a set of texts: is the synthetic data varied?

Text metrics (distinct-n, self-BLEU, exact duplicates) use `tokenize()`: lowercased words and single
punctuation marks. Embedding metrics (Vendi score, mean pairwise cosine) use L2-normalised sentence
embeddings (`embedder.py`). Each is a pure function of its inputs; None where a set is too small.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from axolotl_domino.score.embedder import unit_rows


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


def vendi_score(embeddings: np.ndarray) -> float | None:
    """Vendi score (Friedman & Dieng, 2023) with the cosine-similarity kernel: exp(-sum_i l_i log l_i) for l_i
    the eigenvalues of K/n, K[i, j] = cos(x_i, x_j). The "effective number of distinct items": 1 for n identical
    items, n for n mutually orthogonal items. Computed from the d x d matrix X^T X / n when d < n (same nonzero
    eigenvalues). None for an empty set."""
    x = unit_rows(embeddings)
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
    x = unit_rows(embeddings)
    n = len(x)
    if n < 2:
        return None
    total = x.sum(axis=0)
    return float((total @ total - np.einsum("ij,ij->", x, x)) / (n * (n - 1)))


def diversity(texts: list[str], embeddings: np.ndarray) -> dict[str, float | None]:
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
