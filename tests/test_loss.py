"""The prefix-shared DOMINO loss equals the naive computation, in value and gradient, for every option."""

from __future__ import annotations

import itertools

import pytest
import torch

from axolotl_domino.loss import domino_loss, in_batch_negatives, prefix_logprobs, sample_negatives, sequence_logprob


def _batch(num_rows: int, vocab: int = 97, max_len: int = 9, seed: int = 1):
    """Right-padded random token rows of different lengths (>= 1 real token each)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (num_rows,), generator=gen)
    lengths[0] = max_len
    ids = torch.randint(3, vocab, (num_rows, max_len), generator=gen)
    mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
    return ids * mask, mask


def _params(k: int, l: int, batch: int, hidden: int = 32, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    domain = torch.randn(k, hidden, generator=gen).requires_grad_()
    sample = torch.randn(batch, l, hidden, generator=gen).requires_grad_() if l else None
    return domain, sample


OPTIONS = list(itertools.product([True, False], ["in_batch", "sampled", "l1_only"], [0.5, 1.0]))


@pytest.mark.parametrize("length_normalized,negatives_mode,weight", OPTIONS)
def test_shared_prefix_matches_naive(tiny_llama, length_normalized, negatives_mode, weight):
    batch, extra = 3, (2 if negatives_mode == "sampled" else 0)
    ids, mask = _batch(batch + extra)
    if negatives_mode == "sampled":  # each anchor: one in-batch row and both extra rows
        negatives = torch.tensor([[1, 3, 4], [2, 4, 3], [0, 3, 4]])
    else:
        negatives = None
    results = []
    for share in (True, False):
        domain, sample = _params(4, 0 if negatives_mode == "l1_only" else 3, batch)
        out = domino_loss(tiny_llama, domain, sample, ids, mask, negatives, weight, length_normalized, share_prefix=share)
        out.loss.backward()
        grads = [domain.grad] + ([sample.grad] if sample is not None else [])
        results.append((out, grads))
    (fast, fast_grads), (naive, naive_grads) = results
    torch.testing.assert_close(fast.loss, naive.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.l1, naive.l1, rtol=1e-5, atol=1e-5)
    if negatives_mode == "l1_only":
        assert fast.l2 is None and naive.l2 is None
    else:
        torch.testing.assert_close(fast.l2, naive.l2, rtol=1e-5, atol=1e-5)
        assert fast.accuracy.item() == naive.accuracy.item()
    for g_fast, g_naive in zip(fast_grads, naive_grads):
        assert g_fast.abs().sum() > 0
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-4, atol=1e-6)


def test_pads_do_not_change_the_loss(tiny_llama):
    """Extra right padding (any pad id) leaves every term unchanged: pads are masked out."""
    ids, mask = _batch(3, max_len=6)
    domain, sample = _params(2, 2, 3)
    base = domino_loss(tiny_llama, domain, sample, ids, mask)
    padded_ids = torch.cat([ids, torch.full((3, 4), 7)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    padded = domino_loss(tiny_llama, domain, sample, padded_ids, padded_mask)
    torch.testing.assert_close(base.loss, padded.loss, rtol=1e-5, atol=1e-5)


def test_sequence_logprob_by_hand():
    token_logp = torch.log(torch.tensor([[0.5, 0.8, 1 / 3]]))
    mask = torch.tensor([[1, 1, 0]])
    expected = torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.8))
    torch.testing.assert_close(sequence_logprob(token_logp, mask, False)[0], expected)
    torch.testing.assert_close(sequence_logprob(token_logp, mask, True)[0], expected / 2)


@pytest.mark.parametrize("share", [True, False])
def test_chunked_vocabulary_logits_give_the_same_loss_and_gradients(tiny_llama, monkeypatch, share):
    """Logits made a few positions at a time (and recomputed in backward) equal the full-logits computation."""
    from axolotl_domino import loss

    ids, mask = _batch(3)
    results = []
    for chunk, capped in ((3, None), (10_000, None), (3, 30.0)):  # chunks of 3 positions; one chunk; full logits
        monkeypatch.setattr(loss, "LOGIT_CHUNK_TOKENS", chunk)
        monkeypatch.setattr(tiny_llama.config, "final_logit_softcapping", capped, raising=False)
        if capped:  # a capped head runs the whole model; Llama ignores the cap, so values must not change
            monkeypatch.setattr(tiny_llama, "get_decoder", None)  # and the decoder-only path must not be taken
        domain, sample = _params(4, 3, 3)
        out = domino_loss(tiny_llama, domain, sample, ids, mask, share_prefix=share)
        out.loss.backward()
        results.append((out.loss.detach(), domain.grad, sample.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_no_step_holds_logits_for_every_position(tiny_llama, monkeypatch):
    """The output embedding only ever sees LOGIT_CHUNK_TOKENS positions at once, forward and backward."""
    from axolotl_domino import loss

    monkeypatch.setattr(loss, "LOGIT_CHUNK_TOKENS", 4)
    rows = []
    hook = tiny_llama.lm_head.register_forward_hook(lambda module, args, out: rows.append(out.reshape(-1, out.shape[-1]).shape[0]))
    try:
        ids, mask = _batch(3)
        domain, sample = _params(4, 3, 3)
        domino_loss(tiny_llama, domain, sample, ids, mask).loss.backward()
    finally:
        hook.remove()
    assert max(rows) <= 4 and sum(r for r in rows if r > 3) > 0  # chunks of 4 (prefix runs keep 1 position each)


def test_sampled_negatives_are_distinct_others_and_follow_the_generator():
    drawn = sample_negatives([0, 3, 3], 6, 4, torch.Generator().manual_seed(7))
    assert [len(row) for row in drawn] == [4, 4, 4]
    assert all(anchor not in row and len(set(row)) == 4 for anchor, row in zip([0, 3, 3], drawn))
    assert drawn == sample_negatives([0, 3, 3], 6, 4, torch.Generator().manual_seed(7))  # resumable from its state


def test_in_batch_negatives_exclude_the_anchor():
    neg = in_batch_negatives(4)
    assert neg.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]


@pytest.mark.parametrize("form,trains_domain", [("infonce", True), ("paper", False), ("infonce", False)])
def test_options_shared_prefix_matches_naive(tiny_llama, form, trains_domain):
    ids, mask = _batch(3)
    results = []
    for share in (True, False):
        domain, sample = _params(4, 3, 3)
        out = domino_loss(tiny_llama, domain, sample, ids, mask, share_prefix=share, contrastive_form=form,
                          contrastive_trains_domain=trains_domain)
        out.loss.backward()
        results.append((out.loss, domain.grad, sample.grad))
    for fast, naive in zip(*results):
        torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-6)


def test_without_domain_gradient_from_l2_d_learns_from_l1_alone(tiny_llama):
    """contrastive_trains_domain=False: D's gradient is exactly L1's; S still gets L2's."""
    ids, mask = _batch(3)
    domain, sample = _params(4, 3, 3)
    domino_loss(tiny_llama, domain, sample, ids, mask, contrastive_weight=1.0, contrastive_trains_domain=False).loss.backward()
    l1_domain, _ = _params(4, 3, 3)
    domino_loss(tiny_llama, l1_domain, None, ids, mask).loss.backward()
    torch.testing.assert_close(domain.grad, l1_domain.grad, rtol=1e-5, atol=1e-7)
    assert sample.grad.abs().sum() > 0
    with_d, _ = _params(4, 3, 3)
    domino_loss(tiny_llama, with_d, _params(4, 3, 3)[1], ids, mask).loss.backward()
    assert not torch.allclose(with_d.grad, l1_domain.grad)  # the default does pass L2's gradient to D


def test_prefix_logprobs_scores_each_row_under_the_prefix(tiny_llama):
    """One prefix, many rows, any chunk size: log p(X_r | prefix) as the naive full-sequence sum."""
    ids, mask = _batch(5)
    prefix = _params(3, 0, 1)[0].detach()
    emb = tiny_llama.get_input_embeddings()
    expected = []
    for r in range(5):
        x = ids[r, : int(mask[r].sum())]
        logits = tiny_llama(inputs_embeds=torch.cat([prefix, emb(x)])[None]).logits[0, 3 - 1 : -1]
        expected.append(torch.log_softmax(logits, -1).gather(1, x[:, None]).sum())
    for chunk in (1, 2, 32):
        got = prefix_logprobs(tiny_llama, prefix, ids, mask, length_normalized=False, chunk=chunk)
        torch.testing.assert_close(got, torch.stack(expected).detach(), rtol=1e-5, atol=1e-5)


def test_l2_by_hand(tiny_llama):
    """L2 is -mean_i [log p_ii - logsumexp_j!=i log p_ij] (InfoNCE: over every j, so >= 0); accuracy counts
    p_ii > max_j p_ij."""
    ids, mask = _batch(3)
    domain, sample = _params(2, 2, 3)
    out = domino_loss(tiny_llama, domain, sample, ids, mask, share_prefix=False, length_normalized=False)
    infonce = domino_loss(tiny_llama, domain, sample, ids, mask, share_prefix=False, length_normalized=False,
                          contrastive_form="infonce")
    emb = tiny_llama.get_input_embeddings()
    logp = torch.empty(3, 3)
    for i in range(3):
        for j in range(3):
            n = int(mask[j].sum())
            x = ids[j, :n]
            seq = torch.cat([domain, sample[i], emb(x)])[None]
            logits = tiny_llama(inputs_embeds=seq).logits[0, 4 - 1 : -1]
            logp[i, j] = torch.log_softmax(logits, -1).gather(1, x[:, None]).sum()
    expected = torch.stack([-(logp[i, i] - torch.logsumexp(logp[i][torch.arange(3) != i], 0)) for i in range(3)]).mean()
    torch.testing.assert_close(out.l2, expected.detach(), rtol=1e-5, atol=1e-5)
    expected_infonce = torch.stack([-(logp[i, i] - torch.logsumexp(logp[i], 0)) for i in range(3)]).mean()
    torch.testing.assert_close(infonce.l2, expected_infonce.detach(), rtol=1e-5, atol=1e-5)
    assert infonce.l2 >= 0
    acc = sum(bool(logp[i, i] > logp[i][torch.arange(3) != i].max()) for i in range(3)) / 3
    assert out.accuracy.item() == pytest.approx(acc)


def test_gradients_are_the_same_on_every_run_with_several_cpu_threads():
    """Same inputs, same D and S gradients, bit for bit, with 2 threads. Indexing the shared prefix with
    repeated rows (`keys[rows]`) has an accumulating backward that adds in a thread-dependent order on CPU:
    the same seed gave a different D* after a few steps. Sizes here are large enough for torch to split it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    ids, mask = _batch(4, max_len=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(3):
            domain, sample = _params(32, 32, 4, hidden=256)
            domino_loss(model, domain, sample, ids, mask).loss.backward()
            grads.append((domain.grad, sample.grad))
    finally:
        torch.set_num_threads(threads)
    for domain_grad, sample_grad in grads[1:]:
        assert torch.equal(domain_grad, grads[0][0]) and torch.equal(sample_grad, grads[0][1])
