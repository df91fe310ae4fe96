"""A test-only Axolotl plugin: `kill -9` the whole run (its process group) right after a chosen training step.

Listed in a YAML's `plugins:` and armed by the environment variable below, so that the killed run and its
rerun use the same config (and so the same induction key). Importable by the child process through
PYTHONPATH, which the test sets.
"""

from __future__ import annotations

import os
import signal

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

STEP_ENV = "DOMINO_TEST_KILL_AT_STEP"


class _KillAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        # Called after the optimizer step, before that step's logging and checkpoint.
        if state.global_step == self.step:
            os.killpg(os.getpgid(0), signal.SIGKILL)


class KillAtStep(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):
        step = os.environ.get(STEP_ENV)
        return [_KillAtStep(int(step))] if step else []
