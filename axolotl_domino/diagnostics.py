"""Induction diagnostics: while D trains, is it memorising the references, and is the contrastive term working?

Every `domino.induction.eval_steps` optimizer steps and at the last step, global rank 0 measures:

- **retrieval** (what L2 trains, over the whole set instead of one micro-batch): every reference X_c of a
  fixed subset is scored under every [D; S_i] of the subset; `retrieval_top1` is the share of anchors i whose
  own X_i is the most likely, `retrieval_mean_rank` the mean rank of X_i (1 = best), each beside its chance
  level (1/n and (n+1)/2). Without S (plain prompt tuning) there is nothing to retrieve.
- **memorisation probe**: `eval_samples` samples from D alone with the synthesis sampler and settings (fixed
  seed): `near_copy_share` (the scorecard's definition: nearest-reference cosine above
  `domino.score.memorization_threshold`), `nearest_reference_similarity` (mean of that cosine), `distinct_2`,
  and `finished_share`, the share that ends with EOS within `synthesis.max_new_tokens` (a weak D rambles and
  its samples are cut and dropped).
- **likelihood** under D alone, as mean per-token negative log-likelihood: `reference_nll` (the subset) and,
  with `domino.score.heldout_path`, `heldout_nll`. A falling reference NLL with a rising held-out NLL is
  over-fitting.

The metrics go through the trainer's logging as `domino/eval/*` (tensorboard, wandb, ...), and after each eval
into `induction_report.json` beside the adapter, with `induction_report.png` (the curves) at the end.
`keep: best` restores, before the adapter is saved, the D of the eval with the best held-out likelihood
(reference likelihood without a held-out set) among those whose near-copy share is under the cap.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor
from transformers import PreTrainedModel, TrainerCallback

from axolotl_domino.args import DominoConfig
from axolotl_domino.files import write_atomic
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.hf import pad_right, pad_token_id
from axolotl_domino.loss import prefix_logprobs
from axolotl_domino.references import reference_token_ids, sample_text
from axolotl_domino.score.diversity import distinct_n
from axolotl_domino.score.embedder import Embedder, load_embedder
from axolotl_domino.score.memorization import nearest_cosines
from axolotl_domino.score.plots import curves_png
from axolotl_domino.score.scorecard import load_heldout

LOG = logging.getLogger("axolotl.integrations.domino.diagnostics")

REPORT_FILE = "induction_report.json"
PLOT_FILE = "induction_report.png"
PREFIX = "domino/eval/"
# Panels of the PNG: title -> the metrics drawn in it.
PANELS = {
    "memorisation probe": ["near_copy_share", "nearest_reference_similarity", "finished_share", "distinct_2"],
    "retrieval (contrastive)": ["retrieval_top1", "retrieval_top1_chance"],
    "NLL per token under D": ["reference_nll", "heldout_nll"],
}


class InductionProbe:
    """Measures one D (and S) against the references; built once, called at every eval."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, domino: DominoConfig, references: list[str],
                 heldout: list[str] | None = None, embedder: Embedder | None = None):
        settings = domino.induction
        self.model, self.tokenizer, self.domino = model, tokenizer, domino
        self.length_normalized = settings.likelihood == "length_normalized"
        self.references = references
        rng = np.random.default_rng(settings.seed)
        size = min(len(references), settings.eval_references)
        self.subset = sorted(rng.choice(len(references), size=size, replace=False).tolist())
        self.subset_ids = self._tokenize([references[i] for i in self.subset])
        self.heldout_ids = self._tokenize(heldout) if heldout else None
        # The synthesis sampler and settings, with its own budget and a seed fixed for the whole run.
        self.sampling = domino.synthesis.model_copy(update={
            "num_samples": settings.eval_samples, "seed": settings.seed,
            "batch_size": min(settings.eval_samples, domino.synthesis.batch_size or settings.eval_samples),
        })
        self._embedder = embedder
        self._reference_embeddings: np.ndarray | None = None

    def _tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        refs = self.domino.references
        ids = [reference_token_ids(t, self.tokenizer, refs.format, refs.chat_role, refs.max_tokens)[0] for t in texts]
        padded, mask = pad_right(ids, pad_token_id(self.tokenizer))
        return padded.to(self.model.device), mask.to(self.model.device)

    def _mean_nll(self, domain: Tensor, texts: tuple[Tensor, Tensor]) -> float:
        ids, mask = texts
        logp = prefix_logprobs(self.model, domain, ids, mask, length_normalized=True)
        return float(-logp.mean())

    def retrieval(self, domain: Tensor, sample_tokens: torch.nn.Module) -> dict[str, float]:
        ids, mask = self.subset_ids
        n = ids.shape[0]
        rows = []
        with torch.no_grad():
            for ref in self.subset:
                s_ref = sample_tokens(torch.tensor([ref], device=domain.device))[0].to(domain.dtype)
                rows.append(prefix_logprobs(self.model, torch.cat([domain, s_ref]), ids, mask, self.length_normalized))
        scores = torch.stack(rows).float()  # [anchor, candidate]
        own = scores.diagonal()
        ranks = 1 + (scores > own[:, None]).sum(dim=1)
        return {
            "retrieval_top1": float((ranks == 1).float().mean()), "retrieval_top1_chance": 1 / n,
            "retrieval_mean_rank": float(ranks.float().mean()), "retrieval_mean_rank_chance": (n + 1) / 2,
            "retrieval_references": n,
        }

    def draw(self, domain: Tensor) -> tuple[dict[str, float], list[str]]:
        """The probe's samples from D, with the metrics that need no embedder."""
        refs = self.domino.references
        sampler = PrefixSampler(self.model, self.tokenizer, domain.detach(), self.sampling, self.sampling.stop)
        samples = list(sampler.sample_many(list(range(self.sampling.num_samples))))
        texts = [sample_text(s.token_ids, self.tokenizer, refs.format, refs.chat_role) for s in samples]
        return {"distinct_2": distinct_n(texts, 2) or 0.0, "finished_share": float(np.mean([s.finished for s in samples]))}, texts

    def copy_metrics(self, texts: list[str]) -> dict[str, float]:
        """Near copies among the probe's samples; the embedder loads on first use (it is CPU work)."""
        if self._reference_embeddings is None:
            self._embedder = self._embedder or load_embedder(self.domino.score.embedding_model)
            self._reference_embeddings = self._embedder.encode(self.references)
        return copy_metrics(self._embedder.encode(texts), self._reference_embeddings, self.domino.score.memorization_threshold)

    def measure(self, domain: Tensor, sample_tokens: torch.nn.Module | None) -> tuple[dict[str, float], list[str]]:
        """Everything but the near-copy metrics: the part that runs on the model's device."""
        was_training = self.model.training
        try:
            domain = domain.detach()
            metrics, texts = self.draw(domain)
            metrics["reference_nll"] = self._mean_nll(domain, self.subset_ids)
            if self.heldout_ids is not None:
                metrics["heldout_nll"] = self._mean_nll(domain, self.heldout_ids)
            if sample_tokens is not None:
                metrics.update(self.retrieval(domain, sample_tokens))
        finally:
            self.model.train(was_training)
        return metrics, texts

    def __call__(self, domain: Tensor, sample_tokens: torch.nn.Module | None) -> tuple[dict[str, float], list[str]]:
        """The metrics of this D (and S), and the probe's samples."""
        metrics, texts = self.measure(domain, sample_tokens)
        return self.copy_metrics(texts) | metrics, texts


def copy_metrics(sample_embeddings: np.ndarray, reference_embeddings: np.ndarray, threshold: float) -> dict[str, float]:
    """The scorecard's near-copy definition: a sample whose nearest reference has cosine above `threshold`."""
    cosines, _ = nearest_cosines(sample_embeddings, reference_embeddings)
    return {"near_copy_share": float((cosines > threshold).mean()), "nearest_reference_similarity": float(cosines.mean())}


def best_eval(history: list[dict[str, Any]], max_near_copy_share: float) -> dict[str, Any] | None:
    """The eval `keep: best` keeps: lowest held-out (else reference) NLL among those under the copy cap.

    None when no eval stays under the cap (the last D is kept then, and the log says so).
    """
    under = [e for e in history if e["metrics"]["near_copy_share"] <= max_near_copy_share]
    if not under:
        return None
    key = "heldout_nll" if all("heldout_nll" in e["metrics"] for e in under) else "reference_nll"
    return min(under, key=lambda e: (e["metrics"][key], -e["step"]))


def summary(report: dict[str, Any]) -> list[str]:
    """Lines for `axolotl domino report`: the first and last eval side by side, and what was kept."""
    history = report.get("history") or []
    if not history:
        return ["induction diagnostics: no eval recorded"]
    first, last = history[0], history[-1]
    lines = [f"induction diagnostics ({len(history)} evals, {report.get('seconds_per_eval', 0):.1f} s each), "
             f"step {first['step']} -> step {last['step']}:"]
    for name, value in last["metrics"].items():
        if name.endswith("_chance") or name == "retrieval_references":
            continue
        chance = last["metrics"].get(f"{name}_chance")
        beside = f"   (chance {chance:.3g})" if chance is not None else ""
        lines.append(f"  {name:<30} {first['metrics'].get(name, float('nan')):>8.3f} -> {value:>8.3f}{beside}")
    if report.get("kept_step") is not None:
        lines.append(f"  kept D of step {report['kept_step']} ({report.get('keep')})")
    return lines


class InductionDiagnostics(TrainerCallback):
    """Runs the probe on global rank 0 during `axolotl train` of an `adapter: domino_prompt` config."""

    def __init__(self, trainer: Any, domino: DominoConfig, references: list[str]):
        self.trainer, self.domino, self.references = trainer, domino, references
        self.settings = domino.induction
        self.probe: InductionProbe | None = None
        # Read now, before training starts: a bad held-out file fails here, not at the first eval.
        heldout_path = domino.score.heldout_path
        self.heldout = load_heldout(heldout_path, domino.score.heldout_field) if heldout_path else None
        self.history: list[dict[str, Any]] = []
        self.seconds: list[float] = []

    @property
    def _dir(self) -> Path:
        return Path(self.trainer.args.output_dir)

    def _prompt_model(self) -> Any:
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def _snapshot(self, step: int) -> Path:
        return self._dir / f"eval-step{step}.domain.safetensors"

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run keeps the evals up to its checkpoint's step and drops the rest."""
        report = self._dir / REPORT_FILE
        if state.is_world_process_zero and report.is_file():
            self.history = [e for e in json.loads(report.read_text())["history"] if e["step"] <= state.global_step]

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if state.is_world_process_zero and (step % self.settings.eval_steps == 0 or step >= state.max_steps):
            self._evaluate(step)

    def _evaluate(self, step: int) -> None:
        started = time.perf_counter()
        model = self._prompt_model()
        if self.probe is None:
            self.probe = InductionProbe(model.get_base_model(), self.trainer.processing_class, self.domino,
                                        self.references, self.heldout)
        metrics, texts = self.probe(model.domain_tokens, model.domino_sample)
        seconds = time.perf_counter() - started
        self.seconds.append(seconds)
        self.history.append({"step": step, "metrics": metrics, "examples": texts[:3]})
        if self.settings.keep == "best" and best_eval(self.history, self.settings.best_max_near_copy_share) is self.history[-1]:
            write_atomic(self._snapshot(step), save({"prompt_embeddings": model.domain_tokens.detach().float().cpu().contiguous()}))
        self._write(step)  # until the run ends, the D of the latest eval is the one that would be saved
        # Trainer.log clears control.should_log, which would drop this step's regular training log.
        should_log = self.trainer.control.should_log
        self.trainer.log({PREFIX + name: value for name, value in metrics.items()} | {PREFIX + "seconds": seconds})
        self.trainer.control.should_log = should_log
        LOG.info("domino: induction eval at step %d took %.1f s (domino.induction.eval_steps: %d; 0 turns it off)",
                 step, seconds, self.settings.eval_steps)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.history:
            return
        self._write(self._restore_best() if self.settings.keep == "best" else self.history[-1]["step"])
        write_atomic(self._dir / PLOT_FILE, curves_png(self.history, PANELS))

    def _restore_best(self) -> int | None:
        """Put the chosen eval's D into the adapter before Axolotl saves it; the snapshots go. Returns its step."""
        best = best_eval(self.history, self.settings.best_max_near_copy_share)
        if best is None:
            LOG.warning("domino: keep: best found no eval with near_copy_share <= %.2f; keeping the last D",
                        self.settings.best_max_near_copy_share)
        else:
            domain = load_file(str(self._snapshot(best["step"])))["prompt_embeddings"]
            with torch.no_grad():
                self._prompt_model().domain_tokens.copy_(domain)
            LOG.info("domino: keep: best -> D of step %d (%s)", best["step"], best["metrics"])
        for snapshot in self._dir.glob("eval-step*.domain.safetensors"):
            snapshot.unlink()
        return None if best is None else best["step"]

    def _write(self, kept_step: int | None) -> None:
        report = {
            "settings": self.settings.model_dump(mode="json"),
            "near_copy_threshold": self.domino.score.memorization_threshold,
            "seconds_per_eval": float(np.mean(self.seconds)) if self.seconds else None,
            "keep": self.settings.keep, "kept_step": kept_step,
            "history": self.history,
        }
        write_atomic(self._dir / REPORT_FILE, (json.dumps(report, indent=2) + "\n").encode())
