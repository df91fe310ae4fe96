"""Induction diagnostics on a tiny random model: the retrieval ranks, the memorisation probe, the choice of `keep: best`."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_domino.args import DominoConfig
from axolotl_domino.diagnostics import InductionProbe, best_eval, summary
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.induce import SampleTokens
from axolotl_domino.loss import prefix_logprobs
from axolotl_domino.references import sample_text

REFERENCES = [
    "write a function to find the sum of list",
    "write a python function to reverse string",
    "write a function to count even number",
    "write a function to find max value",
    "write a function to sort list",
]


@pytest.fixture
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).requires_grad_(False)
    return model, tokenizer


def _domino(tmp_path, **induction) -> DominoConfig:
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"text": t}) + "\n" for t in REFERENCES))
    return DominoConfig.model_validate({
        "references": {"path": str(refs)},
        "induction": {"num_domain_tokens": 3, "num_sample_tokens": 2, "eval_samples": 6, **induction},
        "synthesis": {"max_new_tokens": 6, "temperature": 1.0},
    })


def test_retrieval_ranks_each_reference_under_every_sample_prefix(tiny, tmp_path, hash_embedder):
    model, tokenizer = tiny
    domino = _domino(tmp_path, eval_references=4)
    probe = InductionProbe(model, tokenizer, domino, REFERENCES, embedder=hash_embedder)
    assert len(probe.subset) == 4 and probe.subset == sorted(set(probe.subset))  # a fixed random subset
    domain = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    sample = SampleTokens(len(REFERENCES), 2, 32, None, 1.0, seed=0)
    got = probe.retrieval(domain, sample)

    ids, mask = probe.subset_ids
    ranks = []
    for row, ref in enumerate(probe.subset):  # by hand: X_ref's rank among the subset under [D; S_ref]
        scores = prefix_logprobs(model, torch.cat([domain, sample.weight[ref].detach()]), ids, mask, True)
        ranks.append(1 + int((scores > scores[row]).sum()))
    assert got["retrieval_mean_rank"] == pytest.approx(sum(ranks) / 4)
    assert got["retrieval_top1"] == pytest.approx(sum(r == 1 for r in ranks) / 4)
    assert got["retrieval_top1_chance"] == 0.25 and got["retrieval_mean_rank_chance"] == 2.5


def test_probe_counts_near_copies_with_the_synthesis_sampler(tiny, tmp_path, hash_embedder):
    """References equal to what D samples are all near copies; other references are not."""
    model, tokenizer = tiny
    domino = _domino(tmp_path)
    domain = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    probe = InductionProbe(model, tokenizer, domino, REFERENCES, embedder=hash_embedder)
    metrics, texts = probe(domain, None)
    assert "retrieval_top1" not in metrics  # no S: plain prompt tuning has nothing to retrieve

    # The same samples, drawn directly with the synthesis sampler and the probe's seed.
    sampler = PrefixSampler(model, tokenizer, domain, probe.sampling, [])
    drawn = sampler.sample(list(range(6)))
    assert texts == [sample_text(s.token_ids, tokenizer, "text", "user") for s in drawn]
    assert metrics["finished_share"] == pytest.approx(sum(s.finished for s in drawn) / 6)

    copying = InductionProbe(model, tokenizer, domino, [t or "empty" for t in texts], embedder=hash_embedder)
    copied, _ = copying(domain, None)
    nonempty = sum(bool(t) for t in texts) / len(texts)
    assert copied["near_copy_share"] == pytest.approx(nonempty) and copied["near_copy_share"] > metrics["near_copy_share"]


def test_probe_restores_training_mode_and_scores_heldout(tiny, tmp_path, hash_embedder):
    model, tokenizer = tiny
    model.train()
    probe = InductionProbe(model, tokenizer, _domino(tmp_path), REFERENCES, heldout=["write a function"],
                           embedder=hash_embedder)
    metrics, _ = probe(torch.zeros(3, 32), None)
    assert model.training
    assert metrics["heldout_nll"] > 0 and metrics["reference_nll"] > 0


def _eval(step, copies, heldout=None, reference=1.0):
    metrics = {"near_copy_share": copies, "reference_nll": reference}
    if heldout is not None:
        metrics["heldout_nll"] = heldout
    return {"step": step, "metrics": metrics}


def test_best_eval_prefers_heldout_likelihood_under_the_copy_cap():
    history = [_eval(50, 0.0, heldout=2.0), _eval(100, 0.05, heldout=1.5), _eval(150, 0.4, heldout=1.2)]
    assert best_eval(history, 0.1)["step"] == 100  # 150 fits better but copies
    assert best_eval(history, 0.5)["step"] == 150
    assert best_eval([_eval(50, 0.3)], 0.1) is None  # nothing under the cap: the last D is kept
    no_heldout = [_eval(50, 0.0, reference=2.0), _eval(100, 0.0, reference=1.0), _eval(150, 0.2, reference=0.5)]
    assert best_eval(no_heldout, 0.1)["step"] == 100


def test_summary_puts_first_and_last_eval_side_by_side():
    report = {"seconds_per_eval": 2.5, "keep": "best", "kept_step": 100,
              "history": [_eval(50, 0.0, heldout=2.0), _eval(100, 0.25, heldout=1.5)]}
    lines = summary(report)
    assert "2 evals" in lines[0] and "step 50 -> step 100" in lines[0]
    assert any("near_copy_share" in line and "0.000 ->    0.250" in line for line in lines)
    assert lines[-1] == "  kept D of step 100 (best)"


def test_keep_best_needs_evals(tmp_path):
    with pytest.raises(ValueError, match="eval_steps > 0"):
        _domino(tmp_path, keep="best", eval_steps=0)


class _TrainerSeat:
    """What the callback reads from the Axolotl trainer it is attached to (the real one needs Axolotl's config)."""

    def __init__(self, model, tokenizer, output_dir):
        from transformers import TrainerControl

        self.model, self.processing_class, self.control = model, tokenizer, TrainerControl()
        self.args = type("Args", (), {"output_dir": str(output_dir)})()
        self.accelerator = type("Accelerator", (), {"unwrap_model": staticmethod(lambda m: m)})()
        self.logged: list[dict] = []

    def log(self, logs):
        self.logged.append(logs)
        self.control.should_log = False  # as Trainer.log does


def test_keep_best_restores_the_chosen_eval_and_a_resume_keeps_earlier_evals(tiny, tmp_path, hash_embedder, monkeypatch):
    from transformers import TrainerState

    from axolotl_domino import diagnostics
    from axolotl_domino.induce import DominoPromptModel

    monkeypatch.setattr(diagnostics, "load_embedder", lambda name=None: hash_embedder)
    model, tokenizer = tiny
    domino = _domino(tmp_path, keep="best", eval_steps=1, best_max_near_copy_share=1.0)
    prompt = DominoPromptModel(model, tokenizer, domino.induction, len(REFERENCES), {})
    seat = _TrainerSeat(prompt, tokenizer, tmp_path / "adapter")
    (tmp_path / "adapter").mkdir()
    callback = diagnostics.InductionDiagnostics(seat, domino, REFERENCES)
    state = TrainerState(max_steps=2)
    set_to = {1: prompt.domain_tokens.detach() * 40, 2: prompt.domain_tokens.detach().clone()}  # 1 scores better here
    for step in (1, 2):
        with torch.no_grad():
            prompt.domain_tokens.copy_(set_to[step])
        state.global_step = step
        seat.control.should_log = True
        callback.on_step_end(None, state, seat.control)
        assert seat.control.should_log  # the step's own training log still happens
    callback.on_train_end(None, state, seat.control)

    report = json.loads((tmp_path / "adapter" / "induction_report.json").read_text())
    nll = {e["step"]: e["metrics"]["reference_nll"] for e in report["history"]}
    chosen = min(nll, key=nll.get)
    assert chosen == 1 and report["kept_step"] == 1 and report["keep"] == "best"  # not the last D: restored
    torch.testing.assert_close(prompt.domain_tokens.detach(), set_to[chosen])
    assert not list((tmp_path / "adapter").glob("eval-step*")) and (tmp_path / "adapter" / "induction_report.png").exists()
    assert [sorted(k for k in logs if k.endswith("near_copy_share")) for logs in seat.logged] == [["domino/eval/near_copy_share"]] * 2

    resumed = diagnostics.InductionDiagnostics(seat, domino, REFERENCES)
    state.global_step = 1  # resumed from a checkpoint at step 1: the eval at step 2 is gone
    resumed.on_train_begin(None, state, seat.control)
    assert [e["step"] for e in resumed.history] == [1]
