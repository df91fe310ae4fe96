"""Reference samples: read and check the user's file, turn each reference into token ids.

Everything here runs before any model is loaded, so a bad file fails in seconds with the file,
the line and the fix in the message. The same `reference_token_ids` is used by induction (to
train D and S) and by synthesis (the format generated samples come back in), so the two
stages cannot disagree on how a reference looks as tokens.

This module is also an Axolotl prompt strategy: `type: axolotl_domino.references` in
`datasets:` tokenizes the indexed reference file the plugin writes for `adapter: domino_prompt`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axolotl_domino.args import DominoConfig
from axolotl_domino.errors import ConfigError
from axolotl_domino.files import DataFileError, jsonl_bytes, read_field, write_atomic
from axolotl_domino.layout import Layout

LOG = logging.getLogger("axolotl.integrations.domino.references")

INDEX_FIELD = "ref_index"


@dataclass(frozen=True)
class References:
    texts: list[str]  # unique, in file order
    path: Path
    duplicates_dropped: int

    @property
    def sha256(self) -> str:
        """Content hash of the reference set as used (after dropping duplicates)."""
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8") + b"\0")
        return digest.hexdigest()


def read_references(path: str | Path, field: str = "text", min_count: int = 1) -> References:
    """Read a JSON Lines reference file; raise `DataFileError` naming the line and the fix.

    `min_count` is `InductionConfig.min_references`: the contrastive term needs two distinct references.
    """
    path = Path(path).expanduser()
    texts: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for number, text in read_field(path, field, "domino.references.path", "domino.references.field", "references"):
        if not text.strip():
            raise DataFileError(f"{path}:{number}: field '{field}' is empty; remove the line or fill it.")
        if text in seen:
            duplicates += 1
            continue
        seen.add(text)
        texts.append(text)
    if duplicates:
        LOG.warning("domino: dropped %d duplicate reference(s) from %s", duplicates, path)
    if len(texts) < min_count:
        raise DataFileError(
            f"domino.references.path: {path} has {len(texts)} distinct reference(s) but at least {min_count} "
            "are needed: the contrastive term compares each reference with others. Add references, or "
            "set domino.induction.num_sample_tokens: 0 for plain prompt tuning (L1 only)."
        )
    return References(texts=texts, path=path, duplicates_dropped=duplicates)


def load_references(domino: DominoConfig) -> References:
    """The references a `domino:` block names, checked against what its induction needs."""
    refs, induction = domino.references, domino.induction
    references = read_references(refs.path, refs.field, induction.min_references)
    n = len(references.texts)
    if not induction.l1_only and induction.negatives == "sampled" and induction.num_negatives > n - 1:
        raise ConfigError(
            f"domino.induction.num_negatives: {induction.num_negatives} negatives per anchor, but {refs.path} has "
            f"{n} distinct references, so each has only {n - 1} others; set num_negatives <= {n - 1}."
        )
    return references


def chat_turn_header(tokenizer: Any, role: str) -> str:
    """What the chat template writes before one `role` turn's content, e.g. "<|im_start|>user\n".

    Only the turn itself is kept: a default system turn the template may add would be the same
    constant in front of every reference, and its EOS would end every generated sample early.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "domino.references.format: chat needs a tokenizer with a chat template; this tokenizer has "
            "none. Use format: text, or set Axolotl's `chat_template:`."
        )
    sentinel = "\x00DOMINO\x00"
    before = tokenizer.apply_chat_template([{"role": role, "content": sentinel}], tokenize=False).split(sentinel)[0]
    eos = tokenizer.eos_token
    return before[before.rfind(eos) + len(eos) :].lstrip() if eos and eos in before else before


def reference_token_ids(text: str, tokenizer: Any, format: str, chat_role: str, max_tokens: int) -> tuple[list[int], bool]:
    """Token ids of one reference, ending with EOS (the stop the generator must learn), no BOS.

    Returns the ids and whether the text was truncated to `max_tokens`. D sits in front of every
    reference, so a BOS would only be a constant the soft tokens have to predict.
    """
    if format == "chat":
        text = chat_turn_header(tokenizer, chat_role) + text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    truncated = len(ids) > max_tokens
    return ids[:max_tokens] + [tokenizer.eos_token_id], truncated


def sample_text(token_ids: list[int], tokenizer: Any, format: str, chat_role: str) -> str:
    """The inverse of `reference_token_ids` for a generated sample (EOS already removed)."""
    if format == "chat":
        header = chat_turn_header(tokenizer, chat_role)
        text = tokenizer.decode(token_ids, skip_special_tokens=False)
        return (text[len(header) :] if text.startswith(header) else text).strip()
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def write_indexed(references: References, layout: Layout) -> Path:
    """Write the references with their row index, under a content-addressed name, atomically.

    Axolotl caches tokenized data by dataset path, so the name must change with the content.
    """
    target = layout.indexed_references(references.sha256)
    if not target.exists():
        rows = ({"text": text, INDEX_FIELD: index} for index, text in enumerate(references.texts))
        write_atomic(target, jsonl_bytes(rows))
    return target


class ReferenceTokenizingStrategy:
    """Axolotl prompt strategy for the indexed reference file: ids, mask, labels and the row index."""

    supports_batched = False

    def __init__(self, tokenizer: Any, format: str, chat_role: str, max_tokens: int):
        self.tokenizer = tokenizer
        self.format, self.chat_role, self.max_tokens = format, chat_role, max_tokens

    def tokenize_prompt(self, row: dict[str, Any]) -> dict[str, Any]:
        ids, _ = reference_token_ids(row["text"], self.tokenizer, self.format, self.chat_role, self.max_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids), INDEX_FIELD: row[INDEX_FIELD]}


def load(tokenizer: Any, cfg: Any, ds_cfg: dict | None = None) -> ReferenceTokenizingStrategy:
    """Axolotl's entry point for `type: axolotl_domino.references`."""
    refs = cfg.domino.references
    # Axolotl silently drops rows longer than sequence_len; truncate instead so every S_i is trained.
    budget = min(refs.max_tokens, cfg.sequence_len - 1)
    return ReferenceTokenizingStrategy(tokenizer, refs.format, refs.chat_role, budget)
