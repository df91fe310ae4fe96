"""Helpers of the end-to-end tests: run the real `axolotl` CLI as a user would, read its outputs."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "smollm2-135m-instruct"


def axolotl_env() -> dict[str, str]:
    """The CLI's environment: the venv's tools on PATH, offline, and this folder importable (test plugins)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")]))
    env.update({"AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def run_axolotl(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `axolotl ARGS` from the repository root; fail the test with the output's tail."""
    proc = subprocess.run(
        ["axolotl", *args], cwd=REPO, env=axolotl_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(f"axolotl {' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tensorboard_scalars(output_dir: Path, tag: str) -> list[float]:
    """Values of one logged training metric, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = glob.glob(str(output_dir / "runs" / "*"))
    events = EventAccumulator(run)
    events.Reload()
    return [event.value for event in events.Scalars(tag)]
