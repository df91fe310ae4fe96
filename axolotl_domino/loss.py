"""The DOMINO objective, L = L1 + lambda * L2 (METHOD.md, paper Eq. 1-3), read top to bottom.

    L1 = -(1/B) sum_i log p(X_i | D)                                      sufficiency
    L2 = -(1/B) sum_i [ log p(X_i | D, S_i) - log sum_{j in neg(i)} p(X_j | D, S_i) ]   contrastive (paper)

The paper's L2 has no lower bound: it falls without limit by making the negatives unlikely. The
`infonce` form puts the positive in the denominator as well (sum over {i} + neg(i)), so L2 >= 0
and it stops pushing once X_i clearly wins. `contrastive_trains_domain=False` detaches D inside
L2, so D learns from L1 alone and only S is shaped by the contrast.

`log p(X | prefix)` is the sum of X's token log-probs (`sequence`) or their mean
(`length_normalized`, the research code's choice). X ends with an EOS target; pad positions
never count.

Speed: every sequence starts with D and every pair with anchor i starts with [D; S_i]. With
`share_prefix=True` D is run once per step, then [S_i] once per anchor on top of D's key/value
cache, and each X_j is scored against the cached prefix it needs. Gradients flow back through
the caches into D and S. `share_prefix=False` runs every sequence in full (the naive
computation, kept as the reference the tests and the benchmark compare against).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel
from transformers.utils import ModelOutput

from axolotl_domino.hf import last_logits, scaled_head


@dataclass
class DominoLossOutput(ModelOutput):
    """A ModelOutput (a dict) like every HF forward's, so that ZeRO-3's hooks find the tensors in it."""

    loss: Tensor | None = None  # L1 + lambda * L2 (L1 alone without sample tokens)
    l1: Tensor | None = None
    l2: Tensor | None = None  # None when there is no contrastive term
    accuracy: Tensor | None = None  # share of anchors whose own X_i beats every negative under [D; S_i]


def in_batch_negatives(batch_size: int, device: torch.device | None = None) -> Tensor:
    """Row j != i of the batch for every anchor i: shape [B, B-1]."""
    rows = torch.arange(batch_size, device=device)
    return torch.stack([torch.cat([rows[:i], rows[i + 1 :]]) for i in range(batch_size)])


def sample_negatives(anchors: list[int], num_references: int, k: int, generator: torch.Generator) -> list[list[int]]:
    """For each anchor, K reference indices drawn without replacement from all the others (`negatives: sampled`)."""
    drawn = []
    for anchor in anchors:
        pool = torch.tensor([i for i in range(num_references) if i != anchor])
        drawn.append(pool[torch.randperm(len(pool), generator=generator)[:k]].tolist())
    return drawn


def sequence_logprob(token_logp: Tensor, mask: Tensor, length_normalized: bool) -> Tensor:
    """log p(X | prefix) per row from its tokens' log-probs: [N, T] -> [N]; pads (mask 0) never count."""
    mask = mask.to(token_logp.dtype)
    total = (token_logp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if length_normalized else total


# Vocabulary logits exist for at most this many positions at once, in the forward and the backward pass:
# at the paper's scale (9 sequences x 1024 tokens x 152k vocabulary) full float32 logits alone are ~5.6 GB.
LOGIT_CHUNK_TOKENS = 1024


def _chunk_logprob(head: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _target_logprobs(model: PreTrainedModel, embeds: Tensor, attention_mask: Tensor, targets: Tensor,
                     past: DynamicCache | None = None) -> Tensor:
    """log p(targets[:, t]) per position [N, T], predicted by the last T positions of running `embeds` after `past`.

    The decoder's hidden states go through the output embedding LOGIT_CHUNK_TOKENS positions at a time, each
    chunk recomputed in the backward pass (activation checkpointing), so no [N, T, V] logits are ever held
    (a step with fewer positions is one chunk, kept: nothing to save, nothing recomputed).
    Models whose head scales or caps the logits run the whole model instead (full logits, same values).
    """
    t = targets.shape[1]
    run = {"inputs_embeds": embeds, "attention_mask": attention_mask, "past_key_values": past, "use_cache": past is not None}
    if scaled_head(model):
        logits = model(**run, logits_to_keep=t).logits
        return -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    hidden = model.get_decoder()(**run).last_hidden_state[:, -t:]
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    head, step = model.get_output_embeddings(), LOGIT_CHUNK_TOKENS
    if flat_targets.numel() <= step:  # one chunk: keep its logits for backward rather than recompute them
        return _chunk_logprob(head, flat_hidden, flat_targets).view(targets.shape)
    parts = [
        checkpoint(_chunk_logprob, head, flat_hidden[i : i + step], flat_targets[i : i + step], use_reentrant=False)
        for i in range(0, flat_targets.numel(), step)
    ]
    return torch.cat(parts).view(targets.shape)


@dataclass
class _Prefix:
    """A prefix that has been run: its key/value cache and the logits predicting the next token."""

    kv: list[tuple[Tensor, Tensor]]  # per layer, [P, heads, length, head_dim]
    last_logits: Tensor  # [P, V]
    length: int


def _run_prefix(model: PreTrainedModel, embeds: Tensor, past: _Prefix | None = None) -> _Prefix:
    """Run `embeds` ([P, p, h]) after `past` (row i continues past row i) and keep its cache."""
    n, p = embeds.shape[:2]
    cache, past_len = None, 0
    if past is not None:
        cache = DynamicCache(ddp_cache_data=past.kv, config=model.config)
        past_len = past.length
    mask = torch.ones(n, past_len + p, dtype=torch.long, device=embeds.device)
    logits, cache = last_logits(model, inputs_embeds=embeds, attention_mask=mask, past_key_values=cache, use_cache=True)
    kv = [(keys, values) for keys, values, *_ in cache]
    return _Prefix(kv=kv, last_logits=logits, length=past_len + p)


def _select(prefix: _Prefix, rows: Tensor) -> _Prefix:
    """The prefix rows `rows` (repeats allowed), e.g. one copy of [D; S_i] per pair with anchor i.

    `index_select`, not `tensor[rows]`: the backward of indexing with repeated rows is an accumulating
    `index_put_`, which on a multi-threaded CPU adds in a different order on every run (the same seed
    then gave a different D* after a few steps); `index_select`'s backward (`index_add_`) does not.
    """
    kv = [(keys.index_select(0, rows), values.index_select(0, rows)) for keys, values in prefix.kv]
    return _Prefix(kv=kv, last_logits=prefix.last_logits.index_select(0, rows), length=prefix.length)


def _detached(prefix: _Prefix) -> _Prefix:
    """The same prefix with no gradient path back into what produced it."""
    kv = [(keys.detach(), values.detach()) for keys, values in prefix.kv]
    return _Prefix(kv=kv, last_logits=prefix.last_logits.detach(), length=prefix.length)


def _score_cached(model: PreTrainedModel, prefix: _Prefix, ids: Tensor, mask: Tensor, length_normalized: bool) -> Tensor:
    """log p(X_r | prefix row r) for right-padded X ([N, T]), reusing the prefix's cache."""
    n = ids.shape[0]
    first = -F.cross_entropy(prefix.last_logits.float(), ids[:, 0], reduction="none")  # X[:, 0] from the prefix
    token_logp = first[:, None]
    if ids.shape[1] > 1:
        cache = DynamicCache(ddp_cache_data=prefix.kv, config=model.config)
        attn = torch.cat([mask.new_ones(n, prefix.length), mask[:, :-1]], dim=1)
        embeds = model.get_input_embeddings()(ids[:, :-1])
        token_logp = torch.cat([token_logp, _target_logprobs(model, embeds, attn, ids[:, 1:], past=cache)], dim=1)
    return sequence_logprob(token_logp, mask, length_normalized)


def _score_full(model: PreTrainedModel, prefix_embeds: Tensor, ids: Tensor, mask: Tensor, length_normalized: bool) -> Tensor:
    """log p(X_r | prefix_r) running [prefix_r; X_r] in full (the naive computation)."""
    n, p = prefix_embeds.shape[:2]
    # The last prefix position predicts X[:, 0]; X's own last token predicts nothing, so it is not run.
    embeds = torch.cat([prefix_embeds, model.get_input_embeddings()(ids[:, :-1])], dim=1)
    attn = torch.cat([mask.new_ones(n, p), mask[:, :-1]], dim=1)
    return sequence_logprob(_target_logprobs(model, embeds, attn, ids), mask, length_normalized)


@torch.no_grad()
def prefix_logprobs(model: PreTrainedModel, prefix: Tensor, input_ids: Tensor, attention_mask: Tensor,
                    length_normalized: bool, chunk: int = 32) -> Tensor:
    """log p(X_r | prefix) for every row of right-padded X ([N, T]) under one soft prefix ([p, h]): [N].

    The prefix runs once; rows are scored `chunk` at a time on its cache (the diagnostics score every
    reference under every [D; S_i], which is N^2 sequences).
    """
    embeds = prefix.to(model.get_input_embeddings().weight.dtype).unsqueeze(0)
    run = _run_prefix(model, embeds)
    scores = []
    for start in range(0, input_ids.shape[0], chunk):
        ids, mask = input_ids[start : start + chunk], attention_mask[start : start + chunk]
        rows = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        scores.append(_score_cached(model, _select(run, rows), ids, mask, length_normalized))
    return torch.cat(scores)


def domino_loss(
    model: PreTrainedModel,
    domain: Tensor,
    sample: Tensor | None,
    input_ids: Tensor,
    attention_mask: Tensor,
    negatives: Tensor | None = None,
    contrastive_weight: float = 1.0,
    length_normalized: bool = True,
    share_prefix: bool = True,
    contrastive_form: str = "paper",
    contrastive_trains_domain: bool = True,
) -> DominoLossOutput:
    """DOMINO loss for one micro-batch.

    Args:
        model: the frozen causal LM.
        domain: D, [k, hidden].
        sample: S_i of the B anchors, [B, l, hidden]; None trains D with L1 alone.
        input_ids, attention_mask: right-padded references ending in EOS, [C, T]. Rows 0..B-1 are
            the anchors X_1..X_B; rows B.. are extra negatives (e.g. sampled from all references).
        negatives: [B, K] row indices of each anchor's negatives (never the anchor itself);
            default: the other anchors of the batch.
        contrastive_form: `paper` (negatives only in the denominator) or `infonce` (positive too).
        contrastive_trains_domain: whether L2's gradient reaches D (the paper writes D* in L2).
    """
    embed_dtype = model.get_input_embeddings().weight.dtype
    domain = domain.to(embed_dtype).unsqueeze(0)  # [1, k, h]
    num_anchors = input_ids.shape[0] if sample is None else sample.shape[0]
    anchors, anchor_mask = input_ids[:num_anchors], attention_mask[:num_anchors]
    zeros = torch.zeros(num_anchors, dtype=torch.long, device=input_ids.device)

    # L1: log p(X_i | D) for every anchor.
    if share_prefix:
        d_prefix = _run_prefix(model, domain)
        logp_d = _score_cached(model, _select(d_prefix, zeros), anchors, anchor_mask, length_normalized)
    else:
        logp_d = _score_full(model, domain.expand(num_anchors, -1, -1), anchors, anchor_mask, length_normalized)
    l1 = -logp_d.mean()
    if sample is None:
        return DominoLossOutput(loss=l1, l1=l1.detach(), l2=None, accuracy=None)

    # L2: for anchor i, its own X_i (column 0) against its negatives X_j, all under [D; S_i].
    if negatives is None:
        negatives = in_batch_negatives(num_anchors, input_ids.device)
    if negatives.shape[1] == 0:
        raise ValueError("the contrastive term needs at least one negative per anchor (a micro-batch of >= 2 references)")
    candidates = torch.cat([torch.arange(num_anchors, device=input_ids.device)[:, None], negatives], dim=1)
    anchor_of_pair = torch.arange(num_anchors, device=input_ids.device).repeat_interleave(candidates.shape[1])
    pair_ids, pair_mask = input_ids[candidates.flatten()], attention_mask[candidates.flatten()]
    sample = sample.to(embed_dtype)
    if share_prefix:
        d_for_l2 = d_prefix if contrastive_trains_domain else _detached(d_prefix)
        ds_prefix = _run_prefix(model, sample, past=_select(d_for_l2, zeros))
        logp_pairs = _score_cached(model, _select(ds_prefix, anchor_of_pair), pair_ids, pair_mask, length_normalized)
    else:
        d_for_l2 = domain if contrastive_trains_domain else domain.detach()
        ds_embeds = torch.cat([d_for_l2.expand(num_anchors, -1, -1), sample], dim=1).index_select(0, anchor_of_pair)
        logp_pairs = _score_full(model, ds_embeds, pair_ids, pair_mask, length_normalized)
    logp_pairs = logp_pairs.view(num_anchors, -1)  # [B, 1 + K]
    denominator = logp_pairs if contrastive_form == "infonce" else logp_pairs[:, 1:]
    l2 = -(logp_pairs[:, 0] - torch.logsumexp(denominator, dim=1)).mean()
    accuracy = (logp_pairs[:, 0] > logp_pairs[:, 1:].max(dim=1).values).float().mean()
    return DominoLossOutput(loss=l1 + contrastive_weight * l2, l1=l1.detach(), l2=l2.detach(), accuracy=accuracy)
