"""`kill -9` in the middle of the induction stage, then the same command again: it resumes from the
last complete checkpoint (D, S, optimizer, RNG) and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from _axolotl import REPO, axolotl_env, run_axolotl, write_yaml
from kill_at_step import STEP_ENV

SAVE_STEPS = 3  # of 24 steps: 8 references, micro-batch 2, 6 epochs
KILL_AT_STEP = 5  # after checkpoint-3 was written, before checkpoint-6


def _config(smollm2: Path, tmp_path: Path, name: str, references: Path) -> Path:
    config = {  # a full Axolotl YAML (the SFT keys unused here): `domino induce` resolves it like `train`
        "base_model": str(smollm2),
        "micro_batch_size": 2,
        "num_epochs": 1,
        "learning_rate": 1e-4,
        "output_dir": str(tmp_path / f"{name}-sft"),
        "plugins": ["axolotl_domino.DominoPlugin"],
        "domino": {
            "references": {"path": str(references)},
            "output_dir": str(tmp_path / name),
            "induction": {
                "num_domain_tokens": 4, "num_sample_tokens": 4, "micro_batch_size": 2, "num_epochs": 6,
                "learning_rate": 0.01, "negatives": "sampled", "num_negatives": 2, "save_steps": SAVE_STEPS,
                "eval_steps": 4, "eval_samples": 4,  # the diagnostics run (and resume) without changing D*
                # The same plugins in every run; only the killed one arms the killer (STEP_ENV).
                "axolotl": {"plugins": ["axolotl_domino.DominoPlugin", "kill_at_step.KillAtStep"]},
            },
            "synthesis": {"max_new_tokens": 16},  # the probe's sample length
        },
    }
    return write_yaml(tmp_path / f"{name}.yaml", config)


def _adapter(tmp_path: Path, name: str) -> Path:
    return tmp_path / name / "induction" / "adapter"


def test_killed_induction_resumes_to_the_uninterrupted_result(smollm2, tmp_path):
    references = tmp_path / "refs.jsonl"
    lines = (REPO / "data" / "mbpp" / "references_train100.jsonl").read_text().splitlines()[:8]
    references.write_text("\n".join(lines) + "\n")

    run_axolotl("domino", "induce", str(_config(smollm2, tmp_path, "whole", references)))

    config = _config(smollm2, tmp_path, "killed", references)
    adapter = _adapter(tmp_path, "killed")
    proc = subprocess.run(
        ["axolotl", "domino", "induce", str(config)], cwd=REPO, env={**axolotl_env(), STEP_ENV: str(KILL_AT_STEP)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, timeout=900,
    )
    assert proc.returncode == -signal.SIGKILL, "the induction was not killed at its step"
    assert not (adapter / "domino_stage.json").exists()
    assert sorted(p.name for p in adapter.glob("checkpoint-*")) == [f"checkpoint-{SAVE_STEPS}"]

    log = run_axolotl("domino", "induce", str(config))
    output = log.stdout + log.stderr
    assert "domino: resuming the induction from its last checkpoint" in output
    assert (adapter / "domino_stage.json").exists() and not list(adapter.glob("checkpoint-*"))

    whole = _adapter(tmp_path, "whole")
    for name in ("adapter_model.safetensors", "sample_tokens.safetensors"):
        resumed, expected = load_file(str(adapter / name)), load_file(str(whole / name))
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], rtol=1e-4, atol=1e-5)
    # The resumed run kept the evals before its checkpoint (step 3) and added the rest: the same history.
    steps = [[e["step"] for e in json.loads((a / "induction_report.json").read_text())["history"]] for a in (adapter, whole)]
    assert steps[0] == steps[1] == [4, 8, 12, 16, 20, 24]
    # The same key: nothing to redo.
    again = run_axolotl("domino", "induce", str(config))
    assert "domino: induction up to date" in again.stdout + again.stderr
