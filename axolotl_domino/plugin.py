"""`DominoPlugin`: wires Axolotl's hooks to the DOMINO stages. No stage logic lives here.

Every hook returns early when the YAML has no `domino:` block, so listing the plugin is harmless.
Heavy and Axolotl-internal imports stay inside hook bodies: importing `axolotl.train` or
`axolotl.core.builders` at module level would freeze Axolotl's training-args mixins before the
plugin is registered.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from axolotl.integrations.base import AdapterCapabilities, BasePlugin

from axolotl_domino.args import DominoConfig, check_in_batch_negatives, check_zero3_induction, parse_domino, zero_stage
from axolotl_domino.errors import ConfigError, user_errors

LOG = logging.getLogger("axolotl.integrations.domino")

ADAPTER = "domino_prompt"
REFERENCES_STRATEGY = "axolotl_domino.references"


def _inducing(cfg: Any) -> bool:
    return bool(cfg.get("domino")) and cfg.get("adapter") == ADAPTER


class DominoPlugin(BasePlugin):
    """Axolotl plugin for DOMINO inductive domain-specific data synthesis."""

    def get_input_args(self) -> str:
        return "axolotl_domino.args.DominoArgs"

    def register(self, cfg: dict[str, Any]) -> None:
        """Runs on the raw YAML before validation: the only point where defaults can still be changed, and the
        first where a bad `domino:` block or a setting this machine cannot run can be reported as our message."""
        with user_errors():
            self._register(cfg)

    def _register(self, cfg: dict[str, Any]) -> None:
        domino = cfg.get("domino")
        if domino is None:
            _warn_misspelt_block(cfg)
            return
        from axolotl_domino.cpu import apply_cpu_defaults, cpu_data_parallel, cuda_available

        parse_domino(domino, str(cfg.get("axolotl_config_path") or "the YAML"))  # before Axolotl's own validation
        _resolve_deepspeed_name(cfg)
        if domino.get("cpu_safe_defaults", True) and not cuda_available():
            apply_cpu_defaults(cfg)
            cpu_data_parallel()
        if cfg.get("adapter") == ADAPTER:
            _prepare_induction_config(cfg)
        elif not cfg.get("datasets"):
            from axolotl_domino.pipeline import SYNTHETIC

            # Validation needs a dataset; load_datasets swaps in the synthetic file.
            cfg["datasets"] = [{"path": SYNTHETIC, "type": "completion"}]

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        return [AdapterCapabilities(name=ADAPTER)]

    def load_datasets(self, cfg, preprocess: bool = False):
        """First hook after normalisation, on every rank, before any dataset or model is loaded."""
        if not cfg.get("domino"):
            return None
        with user_errors():
            return self._load_datasets(cfg, preprocess)

    def _load_datasets(self, cfg, preprocess: bool):
        from axolotl_domino.cpu import cpu_device_map, cuda_available

        if cfg.domino.cpu_safe_defaults and not cuda_available():
            cpu_device_map(cfg)
        if _inducing(cfg):
            from axolotl_domino.layout import Layout
            from axolotl_domino.references import load_references, write_indexed

            # Axolotl then loads, tokenizes (references.py strategy), caches and shards it as usual.
            domino = _domino(cfg)
            indexed = write_indexed(load_references(domino), Layout.of(domino))
            cfg.datasets[0]["path"] = str(indexed)
            LOG.info("domino: inducing the domain from %s", indexed)
        else:
            from axolotl_domino.launch import use_node_cores
            from axolotl_domino.pipeline import run_pipeline

            use_node_cores()
            run_pipeline(cfg)  # induction -> synthesis; points cfg.datasets at the synthetic file
            if preprocess and not cfg.rl:
                from axolotl.common.datasets import load_datasets

                # Tokenise and cache the synthetic set here: Axolotl's preprocess CLI would then draw its
                # label-check row with randrange(0, len - 1), which raises on a one-row dataset.
                return load_datasets(cfg=cfg)
        return None

    def load_adapter(self, model, cfg, inference: bool = False, config_only: bool = False):
        if not _inducing(cfg):
            return None
        with user_errors():
            return self._load_adapter(model, cfg, config_only)

    def _load_adapter(self, model, cfg, config_only: bool):
        from axolotl_domino.induce import DominoPromptModel, prompt_tuning_config

        domino = _domino(cfg)
        if config_only:
            return None, prompt_tuning_config(domino.induction, cfg.base_model)
        from axolotl.loaders import load_tokenizer

        from axolotl_domino.references import load_references

        references = load_references(domino)
        metadata = {
            "base_model": cfg.base_model,
            "references_path": str(references.path),
            "references_sha256": references.sha256,
            "reference_format": domino.references.format,
        }
        peft_model = DominoPromptModel(model, load_tokenizer(cfg), domino.induction, len(references.texts), metadata)
        return peft_model, peft_model.peft_config[peft_model.active_adapter]

    def get_trainer_cls(self, cfg):
        if not _inducing(cfg):
            return None
        from axolotl_domino.trainer import DominoInductionTrainer

        return DominoInductionTrainer

    def add_callbacks_post_trainer(self, cfg, trainer) -> list:
        """The induction diagnostics (`domino/eval/*`, induction_report.json), unless eval_steps is 0."""
        if not _inducing(cfg) or not _domino(cfg).induction.eval_steps:
            return []
        if zero_stage(cfg.get("deepspeed")) == 3:
            LOG.warning("domino: induction diagnostics skipped: under ZeRO-3 every rank must join each forward pass of "
                        "the partitioned model, and the probe samples on rank 0 alone. D* is measured after induction: "
                        "the synthesis stage's scorecard (`axolotl domino report`) has its samples' near copies and MMD.")
            return []
        from axolotl_domino.diagnostics import InductionDiagnostics
        from axolotl_domino.references import load_references

        domino = _domino(cfg)
        with user_errors():
            return [InductionDiagnostics(trainer, domino, load_references(domino).texts)]

    def post_train(self, cfg, model) -> None:
        """Axolotl writes its generic model card over D*'s at the very end: write D*'s card again (main process).

        Axolotl 0.19 calls this hook twice, right after training (D* not saved yet: nothing to do) and last."""
        import os

        from axolotl_domino.induce import METADATA_FILE, write_model_card

        adapter = Path(cfg.output_dir)
        if _inducing(cfg) and int(os.environ.get("RANK", "0")) == 0 and (adapter / METADATA_FILE).is_file():
            write_model_card(adapter)

    def get_training_args(self, cfg) -> dict[str, Any] | None:
        """bf16 on a CPU (`domino.cpu_bf16`): the Trainer refuses bf16 without a bf16 GPU unless told `use_cpu`."""
        if not cfg.get("domino") or not cfg.get("bf16") or cfg.get("bf16") == "auto":
            return None
        from axolotl_domino.cpu import cuda_available

        return None if cuda_available() else {"use_cpu": True}

    def get_collator_cls_and_kwargs(self, cfg, is_eval: bool = False):
        if not _inducing(cfg):
            return None  # never (None, None): Axolotl treats any tuple as "use this collator"
        from axolotl_domino.trainer import DominoCollator

        return DominoCollator, {}


def _domino(cfg: Any) -> DominoConfig:
    """The validated `domino:` block as our model (Axolotl hands it over as a dict)."""
    return parse_domino(cfg.domino)


def _warn_misspelt_block(cfg: dict[str, Any]) -> None:
    """The plugin is listed but there is no `domino:` block: say so when a top-level key looks like a misspelt one,
    since Axolotl drops unknown keys silently and the run would then train without DOMINO."""
    import difflib

    keys = {str(key).lower(): key for key in cfg if key != "domino"}
    close = difflib.get_close_matches("domino", list(keys), n=1, cutoff=0.7)
    if close:
        LOG.warning("domino: no `domino:` block, but a top-level key `%s`; did you mean `domino:`? Without the block "
                    "the plugin does nothing.", keys[close[0]])


def _resolve_deepspeed_name(cfg: dict[str, Any]) -> None:
    """`deepspeed: zero1|zero2|zero3` names the JSON shipped in this package (Axolotl's wheel has none)."""
    name = cfg.get("deepspeed")
    if isinstance(name, str) and name in ("zero1", "zero2", "zero3"):
        cfg["deepspeed"] = str(Path(__file__).parent / "deepspeed_configs" / f"{name}.json")
        LOG.info("domino: deepspeed: %s -> %s", name, cfg["deepspeed"])


def _prepare_induction_config(cfg: dict[str, Any]) -> None:
    """Induction trains on `domino.references`; make the rest of the YAML agree, or say why it cannot."""
    domino = cfg["domino"]
    references = (domino.get("references") or {}).get("path")
    datasets = cfg.get("datasets")
    if datasets and any(d.get("type") != REFERENCES_STRATEGY for d in datasets):
        raise ConfigError(
            f"datasets: with adapter: {ADAPTER} the training data are the references in domino.references; "
            "remove the `datasets:` block (the plugin fills it in)."
        )
    cfg["datasets"] = [{"path": references, "type": REFERENCES_STRATEGY}]
    induction = domino.get("induction") or {}
    check_zero3_induction(cfg.get("deepspeed"), induction.get("keep", "last"), "deepspeed")
    if cfg.get("sample_packing"):
        raise ConfigError(
            f"sample_packing: prompt tuning (adapter: {ADAPTER}) cannot pack samples (PEFT drops position ids); "
            "set sample_packing: false."
        )
    if cfg.get("val_set_size"):
        raise ConfigError(f"val_set_size: adapter: {ADAPTER} trains on every reference; set val_set_size: 0.")
    contrastive = (induction.get("num_sample_tokens", 256) or 0) > 0 and not induction.get("l1_only")
    check_in_batch_negatives(
        contrastive, induction.get("negatives", "in_batch"), cfg.get("micro_batch_size") or 1, "micro_batch_size"
    )
    # A last micro-batch of one reference has no in-batch negative (and would leave S unused under DDP).
    cfg["dataloader_drop_last"] = True
    if cfg.get("seed") is None:
        # Axolotl draws a random seed for the data order when none is set: the same YAML would train a
        # different D* on every run.
        cfg["seed"] = induction.get("seed", 0)
        LOG.info("domino: seed: %s (domino.induction.seed), so that the same YAML induces the same D*", cfg["seed"])
