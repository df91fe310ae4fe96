"""Memorisation metrics: nearest-reference cosine and the longest common substring."""

from __future__ import annotations

import difflib
import random

import pytest

from axolotl_domino.score.memorization import SuffixAutomaton, longest_common_substrings, nearest_cosines

def test_exact_copy_has_nearest_cosine_one_and_full_length_lcs(hash_embedder):
    refs = ["def add(a, b): return a + b", "write a function to reverse a string", "sum the even numbers in a list"]
    synthetic = [refs[1], "a completely different sentence about rivers"]
    emb = hash_embedder
    cosines, nearest = nearest_cosines(emb.encode(synthetic), emb.encode(refs))
    assert cosines[0] == pytest.approx(1.0, abs=1e-6) and nearest[0] == 1
    assert cosines[1] < 0.9
    lengths, used = longest_common_substrings(synthetic, refs)
    assert lengths[0] == len(refs[1]) and used == 3
    assert lengths[1] == len(max((m for m in _all_common(synthetic[1], refs)), key=len))


def _all_common(query, refs):
    for ref in refs:
        match = difflib.SequenceMatcher(None, query, ref, autojunk=False).find_longest_match(0, len(query), 0, len(ref))
        yield query[match.a : match.a + match.size]


def test_suffix_automaton_matches_brute_force_and_never_crosses_documents():
    rng = random.Random(1)
    for _ in range(300):
        refs = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(1, 4))]
        query = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        assert SuffixAutomaton(refs).longest_common_substring(query) == max(len(m) for m in _all_common(query, refs))
    assert SuffixAutomaton(["abc", "def"]).longest_common_substring("cd") == 1


def test_lcs_cost_bound_subsamples_references():
    refs = ["x" * 100 + str(i) for i in range(50)]
    lengths, used = longest_common_substrings(["x" * 10], refs, max_reference_chars=1000)
    assert used < 50 and lengths == [10]
