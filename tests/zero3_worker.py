"""A few induction steps of `DominoPromptModel` under DeepSpeed ZeRO-3, one process per rank (tests/test_zero3.py).

Run as `torchrun --nproc_per_node=N tests/zero3_worker.py OUT`. The base model is partitioned the way
`from_pretrained` leaves it under ZeRO-3 before the adapter is built, so D's initialisation, the loss's reads of
D and S, and the save all meet partitioned parameters; rank 0 saves D* from the state dict every rank gathered
(as the Trainer does) and writes what it saw to OUT/run.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from axolotl_domino.args import InductionConfig
from axolotl_domino.induce import DominoPromptModel

STEPS, LEARNING_RATE, MICRO_BATCH, NUM_REFERENCES = 3, 0.05, 2, 8
SETTINGS = InductionConfig(num_domain_tokens=4, num_sample_tokens=3)


def base_model() -> LlamaForCausalLM:
    """A frozen 2-layer random Llama, the same on every call."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, attn_implementation="eager")
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def prompt_model(model: LlamaForCausalLM) -> DominoPromptModel:
    return DominoPromptModel(model, None, SETTINGS, NUM_REFERENCES, {"base_model": None})


def micro_batch(step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s references at `step`: right-padded token rows and their reference indices."""
    ids = torch.randint(3, 97, (world * MICRO_BATCH * STEPS, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[::3, 4:] = 0
    rows = torch.arange((step * world + rank) * MICRO_BATCH, (step * world + rank + 1) * MICRO_BATCH)
    return {"input_ids": ids[rows], "attention_mask": mask[rows], "ref_index": rows % NUM_REFERENCES}


def main(out: str) -> None:
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": MICRO_BATCH, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True}
    deepspeed.init_distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    model = base_model()
    deepspeed.zero.Init(module=model, config_dict_or_path=config)
    base_partitioned = model.get_input_embeddings().weight.numel() == 0
    prompt = prompt_model(model)
    trainable = [p for p in prompt.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=prompt, config=config,
                                      optimizer=torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0))
    losses = []
    for step in range(STEPS):
        loss = engine(**micro_batch(step, rank, world)).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    if rank == 0:
        prompt.save_pretrained(os.path.join(out, "adapter"), state_dict=state)
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump({"losses": losses, "world": world, "base_partitioned": base_partitioned,
                       "domain_partitioned": prompt.domain_tokens.numel() == 0, "saved": sorted(state)}, f)


if __name__ == "__main__":
    main(sys.argv[1])
