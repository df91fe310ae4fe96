"""The scorecard: is the synthetic data diverse, in-domain, and not a copy of the references?

`scorecard()` subsamples each set (synthetic, references, held-out) to `max_samples`, embeds it once
(`embedder.py`), computes the three groups of metrics (`diversity.py`, `memorization.py`,
`fidelity.py`) and writes `scorecard.json`, `scorecard.md` (`report.py`), `projection.png` and
`lengths.png` (`plots.py`) into a folder. Fidelity is measured against a held-out set of real domain
samples when one is given, else against the references themselves (the report says so). A metric
that needs more samples than a set has is reported as null with a note; nothing raises on tiny or
empty sets.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from axolotl_domino.args import ScoreConfig
from axolotl_domino.files import read_field, write_atomic
from axolotl_domino.score.diversity import diversity
from axolotl_domino.score.embedder import Embedder, load_embedder
from axolotl_domino.score.fidelity import fidelity, length_stats
from axolotl_domino.score.memorization import memorization
from axolotl_domino.score.plots import lengths_png, projection_png
from axolotl_domino.score.report import render_markdown


LOG = logging.getLogger("axolotl.integrations.domino.score")

JSON_FILE = "scorecard.json"
MARKDOWN_FILE = "scorecard.md"
PROJECTION_FILE = "projection.png"
LENGTHS_FILE = "lengths.png"
SCHEMA_VERSION = 1


def load_heldout(path: str | Path, field: str = "text") -> list[str]:
    """The texts of the held-out JSON Lines file (`domino.score.heldout_path`), one object per line."""
    key = "domino.score.heldout"
    return [text for _, text in read_field(path, field, f"{key}_path", f"{key}_field", "samples")]


def _subsample(texts: Sequence[str], limit: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return [texts[i] for i in np.sort(rng.choice(len(texts), limit, replace=False))]


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

    by_set = {"synthetic": diversity(syn, syn_emb), "references": diversity(ref, ref_emb)}
    if held:
        by_set["held-out"] = diversity(held, held_emb)
    if 2 <= len(ref) < len(syn):
        # distinct-n, self-BLEU and Vendi depend on the set size: a random synthetic subset as large as the
        # references is the like-for-like comparison.
        pick = np.sort(rng.choice(len(syn), len(ref), replace=False))
        by_set["synthetic_matched"] = diversity([syn[i] for i in pick], syn_emb[pick])
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
        "diversity": by_set,
        "memorization": memorization(syn, syn_emb, ref, ref_emb, settings.memorization_threshold, settings.seed,
                                      notes),
        "fidelity": fidelity(syn_emb, target_emb, syn, target, target_name, settings.seed, notes),
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
