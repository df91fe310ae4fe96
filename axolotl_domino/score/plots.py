"""The scorecard's plots: a 2-D map of the embeddings (like the DOMINO paper's Figure 3) and length histograms."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from axolotl_domino.args import TSNE_MAX_POINTS, TSNE_MIN_POINTS


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


def curves_png(history: Sequence[dict], panels: dict[str, list[str]]) -> bytes:
    """PNG of metrics over training steps: one panel per title, one line per metric present in `history`.

    `history` holds {"step": int, "metrics": {name: value}} in step order (the induction report's evals).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(panels), 3.4))
    steps = [entry["step"] for entry in history]
    for position, (title, names) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, len(panels), position)
        for name in names:
            values = [entry["metrics"].get(name) for entry in history]
            if any(v is not None for v in values):
                style = "--" if name.endswith("_chance") else "-o"
                axes.plot(steps, [np.nan if v is None else v for v in values], style, markersize=3, label=name)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("optimizer step")
        if axes.lines:
            axes.legend(fontsize=7)
    figure.tight_layout()
    return _png(figure)
