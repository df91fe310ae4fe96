"""The conditions compared: how each one gets its N problem statements.

- `domino_lambda{X}` and `l1_only`: `axolotl domino induce` then `axolotl domino synthesize`, the real CLI
  on a YAML written into the run's folder;
- `few_shot`: MAGPIE-style few-shot prompting of the base model, sampled with the package's `PrefixSampler`;
- `references`: the references themselves (chosen in quality_repro.py).
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from axolotl_domino.args import SynthesisConfig
from axolotl_domino.files import read_jsonl
from axolotl_domino.generate import PrefixSampler
from axolotl_domino.references import sample_text
from quality.downstream import LORA, SFT_BATCH
from quality.mbpp import REPO

SAMPLING = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 64, "keep_unfinished": True, "batch_size": 32}
INDUCTION = {"num_domain_tokens": 8, "micro_batch_size": 4, "negatives": "in_batch", "likelihood": "length_normalized"}
NUM_SAMPLE_TOKENS = 8
REFERENCE_MAX_TOKENS = 96
FEW_SHOT_EXAMPLES = 5


def axolotl(args: list[str], log: Path) -> str:
    """Run the real `axolotl` CLI as a user would and return the last stdout line (the stage's output path).

    Its stderr (logs, progress bars) goes to `log` as it runs, so a long stage can be followed with `tail -f`.
    """
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    }
    with log.open("w") as handle:
        handle.write(f"$ axolotl {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run(["axolotl", *args], check=False, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
        handle.write(f"--- stdout\n{proc.stdout}")
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        sys.exit(f"axolotl {' '.join(args)} failed (exit {proc.returncode}); log: {log}\n{tail}")
    return proc.stdout.strip().splitlines()[-1]


def induction_losses(domino_dir: Path) -> dict[str, float]:
    """First and last logged L1, last L2 and contrastive accuracy (absent with L1 only), from the induction
    child's log, which the stage keeps (a rerun that skips the up-to-date stage logs nothing new)."""
    logs = sorted((domino_dir / "induction").glob("induce-*.log"), key=lambda path: path.stat().st_mtime)
    lines = logs[-1].read_text().splitlines() if logs else []
    logged = [ast.literal_eval(line[line.index("{"):]) for line in lines if "'domino/l1'" in line]
    if not logged:
        return {}
    first, last = logged[0], logged[-1]
    out = {"induction_l1_first": float(first["domino/l1"]), "induction_l1_last": float(last["domino/l1"])}
    if "domino/l2" in last:
        out["induction_l2_last"] = float(last["domino/l2"])
        out["induction_accuracy_last"] = float(last["domino/contrastive_accuracy"])
    return out


def induced_samples(run: Path, model_dir: Path, references: Path, seed: int, args: argparse.Namespace,
                    contrastive_weight: float | None) -> tuple[list[str], dict[str, Any]]:
    """Induce D* and sample N statements from it through the CLI; `contrastive_weight=None` is L1 only."""
    induction = {
        **INDUCTION, "seed": seed, "num_epochs": args.epochs, "learning_rate": args.induction_lr,
        "axolotl": {"logging_steps": 1},
    }
    if contrastive_weight is None:
        induction.update(l1_only=True, num_sample_tokens=0)
    else:
        induction.update(num_sample_tokens=NUM_SAMPLE_TOKENS, contrastive_weight=contrastive_weight)
    config = {
        "base_model": str(model_dir),
        "plugins": ["axolotl_domino.DominoPlugin"],
        "domino": {
            "output_dir": str(run / "domino"),
            "references": {"path": str(references), "field": "text", "max_tokens": REFERENCE_MAX_TOKENS},
            "induction": induction,
            "synthesis": {**SAMPLING, "num_samples": args.num_samples, "seed": seed},
            "dataset": {"format": "completion"},
            "score": {"enabled": False},  # scored in this process, like every other condition
        },
        # The CLI reads the file as `axolotl train` does, so it must be a complete Axolotl config; these
        # SFT keys are otherwise unused (the fine-tune runs in this process).
        "sequence_len": 256,
        "sample_packing": False,
        "val_set_size": 0,
        "adapter": "lora",
        "lora_r": LORA["r"],
        "lora_alpha": LORA["lora_alpha"],
        "lora_target_modules": LORA["target_modules"],
        "micro_batch_size": SFT_BATCH,
        "num_epochs": 1,
        "learning_rate": args.sft_lr,
        "optimizer": "adamw_torch",
        "save_strategy": "no",
        "output_dir": str(run / "domino" / "sft_unused"),
        "dataset_prepared_path": str(run / "domino" / "sft_unused" / "prepared"),
    }
    yaml_path = run / "domino.yaml"
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    axolotl(["domino", "induce", str(yaml_path)], run / "induce.log")
    induced = time.perf_counter()
    dataset = Path(axolotl(["domino", "synthesize", str(yaml_path)], run / "synthesize.log"))
    info = {
        "induce_s": induced - started,
        "synthesize_s": time.perf_counter() - induced,
        **induction_losses(run / "domino"),
    }
    return [row["text"] for row in read_jsonl(dataset)], info


def few_shot_samples(model, tokenizer, references: list[str], seed: int, num_samples: int) -> list[str]:
    """MAGPIE-style few-shot: the embeddings of a chat prompt showing 5 references as the prefix."""
    examples = random.Random(seed).sample(references, min(FEW_SHOT_EXAMPLES, len(references)))
    request = (
        "Here are some example tasks:\n\n" + "\n\n".join(examples)
        + "\n\nWrite one new task like these. Reply with the task only."
    )
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        prefix = model.get_input_embeddings()(ids)
    settings = SynthesisConfig(**SAMPLING, num_samples=num_samples, seed=seed)
    sampler = PrefixSampler(model, tokenizer, prefix, settings, settings.stop)
    with tqdm(total=num_samples, desc="few-shot sampling", unit="sample", leave=False) as progress:
        samples = list(sampler.sample_many(list(range(num_samples)), progress))
    texts = [sample_text(s.token_ids, tokenizer, "text", "user") for s in samples]
    return [text for text in texts if text]  # empty samples are dropped, as the synthesis stage does
