"""Axolotl trainer and collator for the induction stage (`adapter: domino_prompt`).

Axolotl's own trainer supplies the optimizer, scheduler, accumulation, logging and DDP; this
subclass only feeds the batch's reference indices (and sampled negatives) to the
`DominoPromptModel` and logs L1, L2 and the contrastive accuracy.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from axolotl.core.trainers.base import AxolotlTrainer
from safetensors.torch import load_file, save_file
from transformers import Trainer

from axolotl_domino.errors import ConfigError
from axolotl_domino.hf import pad_right, pad_token_id
from axolotl_domino.loss import sample_negatives
from axolotl_domino.references import INDEX_FIELD

LOG = logging.getLogger("axolotl.integrations.domino.trainer")


class DominoCollator:
    """Right-pads references (the loss needs real tokens first) and stacks their indices."""

    def __init__(self, tokenizer: Any, **_: Any):
        self.pad_token_id = pad_token_id(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_right([f["input_ids"] for f in features], self.pad_token_id)
        index = torch.tensor([int(f[INDEX_FIELD]) for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, INDEX_FIELD: index}


class _NoLossPerplexity(Trainer):
    """Sits between AxolotlTrainer and Trainer in the MRO: drops the `ppl` Axolotl derives from `loss`.

    Here loss = L1 + lambda * L2, so exp(loss) is no perplexity; `domino/l1` is the reference likelihood.
    """

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.pop("ppl", None)
        super().log(logs, start_time)


class DominoInductionTrainer(AxolotlTrainer, _NoLossPerplexity):
    """Trains D (and S) with the DOMINO loss through Axolotl's training loop."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        settings = self.accelerator.unwrap_model(self.model).domino_settings
        self._num_sampled_negatives = settings.num_negatives if settings.negatives == "sampled" else 0
        self._negative_rng = torch.Generator().manual_seed(settings.seed + self.args.process_index)
        self._ids_by_index: dict[int, list[int]] | None = None
        self._sharding_logged = False

    def _set_signature_columns_if_needed(self) -> None:
        # The HF Trainer inspects the *base* model's forward for a PEFT model and would drop ref_index.
        super()._set_signature_columns_if_needed()
        if INDEX_FIELD not in self._signature_columns:
            self._signature_columns.append(INDEX_FIELD)

    def _add_sampled_negatives(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Append K references per anchor, drawn from the whole set (never the anchor itself)."""
        if self._ids_by_index is None:
            self._ids_by_index = {int(r[INDEX_FIELD]): list(r["input_ids"]) for r in self.train_dataset}
        anchors = inputs[INDEX_FIELD].tolist()
        n, k = len(self._ids_by_index), self._num_sampled_negatives
        if n - 1 < k:
            raise ConfigError(
                f"domino.induction.num_negatives: {k} negatives per anchor but only {n} references; "
                f"set num_negatives <= {n - 1}."
            )
        drawn = [j for row in sample_negatives(anchors, n, k, self._negative_rng) for j in row]
        rows = [r[r_mask.bool()].tolist() for r, r_mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        rows += [self._ids_by_index[i] for i in drawn]
        ids, mask = pad_right(rows, int(self.data_collator.pad_token_id))
        device = inputs["input_ids"].device
        negatives = torch.arange(len(anchors), len(anchors) + len(drawn)).view(len(anchors), k)
        return {**inputs, "input_ids": ids.to(device), "attention_mask": mask.to(device), "negatives": negatives.to(device)}

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """The Trainer restores D (the PEFT adapter) and the optimizer; S lies beside the adapter."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.accelerator.unwrap_model(model if model is not None else self.model).load_sample_tokens(resume_from_checkpoint)

    def _negative_rng_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"domino_negatives_rng_{self.args.process_index}.safetensors")

    def _save_rng_state(self, output_dir: str) -> None:
        """Also save the sampled negatives' generator, so a resumed run draws what the uninterrupted one would."""
        super()._save_rng_state(output_dir)
        save_file({"state": self._negative_rng.get_state()}, self._negative_rng_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is not None and os.path.isfile(self._negative_rng_file(checkpoint)):
            self._negative_rng.set_state(load_file(self._negative_rng_file(checkpoint))["state"])

    def _log_sharding(self) -> None:
        """Under ZeRO-3, say once what share of the parameters this rank holds (1 / ranks when the model is split)."""
        self._sharding_logged = True
        params = list(self.accelerator.unwrap_model(self.model).parameters())
        if not all(hasattr(p, "ds_id") for p in params):
            return
        held, total = sum(p.ds_tensor.numel() for p in params), sum(p.ds_numel for p in params)
        LOG.info("domino: ZeRO-3 partitions the frozen model, D and S over %d ranks: this rank holds %.1f%% of the %d "
                 "parameters", self.args.world_size, 100 * held / total, total)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._sharding_logged:
            self._log_sharding()
        if self._num_sampled_negatives:
            inputs = self._add_sampled_negatives(inputs)
        out = model(**inputs)
        if model.training:
            metrics = {"domino/l1": out.l1.item()}
            if out.l2 is not None:
                metrics.update({"domino/l2": out.l2.item(), "domino/contrastive_accuracy": out.accuracy.item()})
            self.store_metrics(metrics, train_eval="train")
        return (out.loss, out) if return_outputs else out.loss
