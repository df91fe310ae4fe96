"""Diversity metrics on hand-made data with a known answer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from axolotl_domino.score.diversity import distinct_n, duplicate_rate, mean_pairwise_cosine, self_bleu, tokenize, vendi_score


def _orthonormal(n, d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, n)))
    return q.T  # n orthonormal rows in d dimensions


def test_vendi_of_identical_items_is_one():
    row = np.random.default_rng(0).normal(size=16)
    assert vendi_score(np.tile(row, (9, 1))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n,d", [(7, 7), (5, 32)])
def test_vendi_of_orthogonal_items_is_n(n, d):
    assert vendi_score(_orthonormal(n, d)) == pytest.approx(n, rel=1e-6)


def test_vendi_counts_groups_when_n_exceeds_dimension():
    # 3 orthogonal directions, each twice (n=6 > d=3: the d x d branch): effectively 3 distinct items.
    x = np.repeat(np.eye(3), 2, axis=0)
    assert vendi_score(x) == pytest.approx(3.0, rel=1e-6)
    assert vendi_score(np.zeros((0, 3))) is None


def test_distinct_n_by_hand():
    texts = ["The cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 unique / 6; bigrams: the-cat, cat-sat, the-cat, cat-ran -> 3 / 4;
    # trigrams: 2 unique / 2 (n-grams never cross texts).
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == pytest.approx(1.0)
    assert distinct_n(["one two"], 3) is None
    assert tokenize("Hello, World!") == ["hello", ",", "world", "!"]


def test_self_bleu_identical_is_one_and_disjoint_is_zero():
    assert self_bleu(["the quick brown fox jumps over the lazy dog"] * 4) == pytest.approx(1.0)
    assert self_bleu(["alpha beta gamma delta", "one two three four", "red green blue cyan"]) == pytest.approx(0.0)
    assert self_bleu(["only one text"]) is None


def test_self_bleu_matches_sacrebleu_sentence_bleu():
    from sacrebleu.metrics import BLEU

    rng = random.Random(0)
    words = "a b c d e f g h".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) for _ in range(25)]
    bleu = BLEU(tokenize="none", effective_order=True)  # what sacrebleu.sentence_bleu uses
    expected = np.mean(
        [bleu.sentence_score(t, [u for j, u in enumerate(texts) if j != i]).score / 100 for i, t in enumerate(texts)]
    )
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-9)


def test_mean_pairwise_cosine_and_duplicates():
    assert mean_pairwise_cosine(np.tile([1.0, 2.0, 3.0], (4, 1))) == pytest.approx(1.0)
    assert mean_pairwise_cosine(np.eye(5)) == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])) == pytest.approx(
        (0 + 2 ** -0.5 + 2 ** -0.5) / 3
    )
    assert mean_pairwise_cosine(np.eye(3)[:1]) is None
    assert duplicate_rate(["a", "b", "a ", "a"]) == pytest.approx(0.5)
