"""Domain induction: the `domino_prompt` adapter (D and S on a frozen model) and what it saves.

`DominoPromptModel` is a PEFT prompt-tuning model whose virtual-token embedding *is* D, so the
saved adapter is a standard PEFT prompt-tuning adapter (`PeftModel.from_pretrained` loads it and
generates from D alone). The per-reference sample tokens S live beside it; when a batch carries
`ref_index` the forward pass returns the DOMINO loss (`loss.py`) instead of next-token logits,
which keeps DDP's gradient synchronisation on the normal `model(**batch)` path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModelForCausalLM, PromptTuningConfig, PromptTuningInit, TaskType
from safetensors.torch import load_file, save
from torch import Tensor, nn
from transformers import PreTrainedModel

from axolotl_domino.args import InductionConfig
from axolotl_domino.loss import DominoLossOutput, domino_loss
from axolotl_domino.files import write_atomic

LOG = logging.getLogger("axolotl.integrations.domino.induce")

SAMPLE_TOKENS_FILE = "sample_tokens.safetensors"
METADATA_FILE = "domino_induction.json"


class SampleTokens(nn.Module):
    """S: `num_tokens` soft tokens per reference; optionally low-rank, S_i = A_i @ B.

    Full S costs n * l * hidden floats (plus two Adam moments each); the low-rank form costs
    n * l * rank + rank * hidden, which is what makes hundreds of references at l = 256 on a 7B
    model affordable.
    """

    def __init__(self, num_references: int, num_tokens: int, hidden: int, rank: int | None, scale: float, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 1)
        self.rank = rank
        if rank is None:
            self.weight = nn.Parameter(torch.randn(num_references, num_tokens, hidden, generator=gen) * scale)
        else:  # Var(A @ B) = rank * 1 * scale^2 / rank = scale^2, the same spread as the full form
            self.private = nn.Parameter(torch.randn(num_references, num_tokens, rank, generator=gen))
            self.shared = nn.Parameter(torch.randn(rank, hidden, generator=gen) * scale / rank**0.5)

    def forward(self, index: Tensor) -> Tensor:
        if self.rank is None:
            return self.weight.index_select(0, index)  # see loss._select: a deterministic backward on CPU
        return self.private.index_select(0, index) @ self.shared

    def tensors(self) -> dict[str, Tensor]:
        """What `sample_tokens.safetensors` holds: the parameters as trained."""
        return {name: param.detach().float().cpu().contiguous() for name, param in self.named_parameters()}


@contextmanager
def gathered(*params: nn.Parameter) -> Iterator[None]:
    """The whole of each parameter, for a read outside a forward pass.

    Under ZeRO-3 `param.data` holds nothing outside a forward (each rank keeps its shard elsewhere); DeepSpeed's
    `GatheredParameters` assembles them, on every rank at once, so every rank must call this. Without ZeRO-3
    it does nothing.
    """
    partitioned = [param for param in params if hasattr(param, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def embedding_scale(model: PreTrainedModel) -> float:
    """Mean L2 norm of a token embedding, divided by sqrt(hidden): the per-entry std of real inputs."""
    with gathered(model.get_input_embeddings().weight):
        weight = model.get_input_embeddings().weight.detach().float()
        return (weight.norm(dim=1).mean() / weight.shape[1] ** 0.5).item()


def initial_domain_tokens(model: PreTrainedModel, tokenizer: Any, settings: InductionConfig) -> Tensor:
    """D at step 0: scaled noise, or the embeddings of `init_text` repeated to k tokens."""
    k = settings.num_domain_tokens
    if settings.init == "text":
        ids = tokenizer(settings.init_text, add_special_tokens=False)["input_ids"]
        ids = (ids * (k // len(ids) + 1))[:k]
        with gathered(model.get_input_embeddings().weight):
            return model.get_input_embeddings().weight.detach().float()[torch.tensor(ids)].clone()
    gen = torch.Generator().manual_seed(settings.seed)
    hidden = model.config.get_text_config().hidden_size
    return torch.randn(k, hidden, generator=gen) * embedding_scale(model)


def prompt_tuning_config(settings: InductionConfig, base_model: str | None = None) -> PromptTuningConfig:
    """The PEFT config of D*: plain prompt tuning with k virtual tokens, so PEFT alone can load and use it."""
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=settings.num_domain_tokens,
        prompt_tuning_init=PromptTuningInit.RANDOM,  # overwritten with our init; RANDOM needs no hub access
        base_model_name_or_path=base_model,
    )


class DominoPromptModel(PeftModelForCausalLM):
    """PEFT prompt tuning whose virtual tokens are D, plus the sample tokens S of the references."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        settings: InductionConfig,
        num_references: int,
        metadata: dict[str, Any],
    ):
        super().__init__(model, prompt_tuning_config(settings, metadata.get("base_model")))
        with torch.no_grad():
            self.prompt_encoder[self.active_adapter].embedding.weight.copy_(
                initial_domain_tokens(model, tokenizer, settings)
            )
        if settings.init == "random":
            LOG.info("domino: D and S start as noise at the token embeddings' per-entry scale s = %.4g; Adam moves each "
                     "entry by about learning_rate per step (docs/METHOD.md, what the learning rate means)",
                     embedding_scale(model))
        self.domino_settings = settings
        self.domino_metadata = {**metadata, "num_references": num_references, "induction": settings.model_dump()}
        self.domino_sample = (
            None
            if settings.l1_only
            else SampleTokens(
                num_references,
                settings.num_sample_tokens,
                model.config.get_text_config().hidden_size,
                settings.sample_token_rank,
                embedding_scale(model),
                settings.seed,
            ).to(model.device)
        )
        self._warned_checkpointing = False
        self._saving: dict[str, Tensor] | None = None  # the state dict save_pretrained was given, while it runs

    @property
    def domain_tokens(self) -> Tensor:
        """D, [k, hidden]: the parameter itself (empty outside a forward pass under ZeRO-3)."""
        return self.prompt_encoder[self.active_adapter].embedding.weight

    def _domain_forward(self) -> Tensor:
        """D as the loss reads it: through its embedding module, whose ZeRO-3 hooks gather a partitioned D on every
        rank (equal to `domain_tokens`, and its gradient too: each row is looked up once)."""
        encoder = self.prompt_encoder[self.active_adapter]
        return encoder(self.prompt_tokens[self.active_adapter].to(encoder.embedding.weight.device))

    def forward(self, input_ids=None, attention_mask=None, ref_index=None, negatives=None, **kwargs):
        """DOMINO loss when the batch carries `ref_index`; plain PEFT prompt tuning otherwise."""
        if ref_index is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self.domino_loss(input_ids, attention_mask, ref_index, negatives)

    def domino_loss(self, input_ids: Tensor, attention_mask: Tensor, ref_index: Tensor, negatives: Tensor | None) -> DominoLossOutput:
        base = self.get_base_model()
        # Gradient checkpointing drops key/value caches inside the layers, so the shared-prefix
        # path would silently score without its prefix; run the (equal, slower) full sequences.
        share_prefix = not (self.training and getattr(base, "is_gradient_checkpointing", False))
        if not share_prefix and not self._warned_checkpointing:
            LOG.warning("domino: gradient checkpointing is on; induction runs every sequence in full (slower)")
            self._warned_checkpointing = True
        settings = self.domino_settings
        return domino_loss(
            base,
            self._domain_forward(),
            None if self.domino_sample is None else self.domino_sample(ref_index),
            input_ids,
            attention_mask,
            negatives,
            settings.contrastive_weight,
            settings.likelihood == "length_normalized",
            share_prefix=share_prefix,
            contrastive_form=settings.contrastive_form,
            contrastive_trains_domain=settings.contrastive_trains_domain,
        )

    def get_prompt_embedding_to_save(self, adapter_name: str) -> Tensor:
        """D for PEFT's adapter file: from the gathered state dict being saved, when there is one (ZeRO-3)."""
        state = self._saving or {}
        key = f"prompt_encoder.{adapter_name}.embedding.weight"
        return state[key].detach().cpu() if key in state else super().get_prompt_embedding_to_save(adapter_name)

    def load_sample_tokens(self, directory: str | Path) -> None:
        """Restore S in place from a checkpoint's sample_tokens.safetensors (the optimizer keeps its handles)."""
        if self.domino_sample is None:
            return
        tensors = load_file(str(Path(directory) / SAMPLE_TOKENS_FILE))
        with torch.no_grad():
            for name, param in self.domino_sample.named_parameters():
                param.copy_(tensors[name])

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """The standard PEFT adapter (D), then S and the run's metadata beside it.

        Under ZeRO-3 the Trainer gathers the trainable parameters on every rank and rank 0 alone saves them, as
        `state_dict`: D and S are then taken from it, since reading a partitioned parameter there would wait for
        ranks that are not saving.
        """
        self._saving = kwargs.get("state_dict")
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self._saving = None
        if not kwargs.get("is_main_process", True):
            return
        directory = Path(save_directory)
        if self.domino_sample is not None:
            state = kwargs.get("state_dict")
            tensors = (
                self.domino_sample.tensors() if state is None else
                {name: state[f"domino_sample.{name}"].detach().float().cpu().contiguous()
                 for name, _ in self.domino_sample.named_parameters()}
            )
            write_atomic(directory / SAMPLE_TOKENS_FILE, save(tensors))
        metadata = json.dumps(self.domino_metadata, indent=2, sort_keys=True) + "\n"
        write_atomic(directory / METADATA_FILE, metadata.encode())
        write_model_card(directory)


def write_model_card(directory: Path) -> None:
    """README.md of an adapter folder: D*'s Hub model card, from the run's metadata saved beside it.

    Also called after Axolotl's own end of training, which writes its generic card over ours."""
    metadata = json.loads((Path(directory) / METADATA_FILE).read_text())
    write_atomic(Path(directory) / "README.md", model_card(metadata).encode("utf-8"))


def model_card(metadata: dict[str, Any]) -> str:
    """The Hub model card of D* (replacing PEFT's empty template): YAML metadata, what D* is, how to use it."""
    from huggingface_hub import ModelCard, ModelCardData

    base = metadata.get("base_model")
    settings = metadata["induction"]
    hub_base = base if base and not base.startswith((".", "/", "~")) and base.count("/") == 1 else None
    data = ModelCardData(
        library_name="peft", base_model=hub_base, pipeline_tag="text-generation",
        tags=["peft", "prompt-tuning", "domino", "axolotl", "synthetic-data"],
    )
    objective = "L1 only (plain prompt tuning)" if settings["l1_only"] else (
        f"L1 + {settings['contrastive_weight']} x L2 ({settings['contrastive_form']} form, {settings['negatives']} "
        "negatives)"
    )
    body = f"""# DOMINO domain tokens D*

{settings["num_domain_tokens"]} soft tokens that stand for a domain induced by
axolotl-domino from {metadata["num_references"]} reference samples
(sha256 `{str(metadata.get("references_sha256", ""))[:16]}...`) on the frozen base model `{base}`. Generating from D*
alone gives new samples of that domain. It is a standard PEFT prompt-tuning adapter:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "<this folder or repo>")
```

| | |
| --- | --- |
| objective | {objective} |
| sample tokens per reference (l) | {settings["num_sample_tokens"]} (`sample_token_rank` {settings["sample_token_rank"]}) |
| likelihood | {settings["likelihood"]} |
| learning rate, epochs | {settings["learning_rate"]}, {settings["num_epochs"]} |
| D* kept | {settings["keep"]} |

`sample_tokens.safetensors` holds S (one set per reference; not needed to generate), `domino_induction.json`
the full settings, and `induction_report.json` (when diagnostics ran) retrieval, memorisation and likelihood
over the training steps. D* was trained on the references only; what it generates inherits their terms.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
