"""Memorisation of the references: is the synthetic data copying them?

The nearest-reference cosine of each synthetic sample (sentence embeddings), the share above a
threshold (near copies), exact copies, and the longest common substring with any single reference
(a suffix automaton over the references, so each query costs its own length).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from axolotl_domino.score.embedder import unit_rows


LCS_MAX_REFERENCE_CHARS = 500_000  # references beyond this are subsampled (the report says how many were used)
LCS_MAX_QUERY_CHARS = 20_000  # each synthetic text is searched up to this many characters


def nearest_cosines(queries: np.ndarray, keys: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each query row: the highest cosine similarity to any key row, and that key's index."""
    q, k = unit_rows(queries), unit_rows(keys)
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


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def memorization(
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
