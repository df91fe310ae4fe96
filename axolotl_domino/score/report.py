"""The scorecard as markdown: one table per group, one line per metric saying how to read it."""

from __future__ import annotations

from typing import Any


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
