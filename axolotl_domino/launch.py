"""How a stage runs: where this process sits in the outer launch, the stage's child process, the output lock.

Each stage runs in a child process whose environment drops the launcher's distributed and
DeepSpeed/accelerate variables, so the outer run's state (e.g. ZeRO-3 partitioning every
`from_pretrained`) cannot leak into it, and its memory is returned before SFT starts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axolotl_domino.errors import DEBUG_HINT, ERROR_PREFIX, DominoError
from axolotl_domino.layout import Layout

LOG = logging.getLogger("axolotl.integrations.domino.launch")

LAUNCHER_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
)
LAUNCHER_ENV_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "DEEPSPEED_", "FSDP_", "OMPI_", "PMI_")
_held_locks: list[Any] = []  # kept for the life of the process; the OS releases them on exit, even on kill -9


class StageError(DominoError, RuntimeError):
    """A stage cannot run or failed; the message says why (the command and its log's tail) and the fix."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the outer launch."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @classmethod
    def from_env(cls) -> Launch:
        world = int(os.environ.get("WORLD_SIZE", 1))
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=world,
            local_world_size=local_world_size(world),
        )


# Launchers' names for "processes of this job on this node" (torchrun/accelerate, Open MPI, MPICH, Slurm).
LOCAL_SIZE_ENV = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def local_world_size(world_size: int) -> int:
    """Processes of this launch on this node: the launcher's variable, else a guess that never spans nodes.

    WORLD_SIZE is not a fallback: on several nodes it would start the whole world's processes on one node.
    """
    for key in LOCAL_SIZE_ENV:
        match = re.match(r"\d+", os.environ.get(key, ""))  # Slurm writes e.g. "4(x2)"
        if match:
            return int(match.group())
    if world_size == 1:
        return 1
    import torch

    guess = max(1, min(world_size, torch.cuda.device_count())) if torch.cuda.is_available() else 1
    LOG.warning("domino: none of %s is set; assuming %d process(es) of the %d on this node (the visible GPUs). "
                "Set LOCAL_WORLD_SIZE if that is wrong.", ", ".join(LOCAL_SIZE_ENV), guess, world_size)
    return guess


def node_threads(processes_per_node: int = 1) -> int:
    """The cores this process may use, shared among `processes_per_node` processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # not on macOS
    return max(1, cores // processes_per_node)


def use_node_cores() -> None:
    """Give the outer run's own CPU work (Axolotl's SFT) the node's cores.

    `accelerate launch` sets OMP_NUM_THREADS=1 for a CPU process unless told otherwise, so a single-process
    CPU run would fine-tune on one core of many. With several processes on the node each keeps its share.
    """
    import torch

    if torch.cuda.is_available():
        return
    threads = node_threads(Launch.from_env().local_world_size)
    if torch.get_num_threads() < threads:
        LOG.info("domino: no CUDA; this process trains on %d threads, not %d (OMP_NUM_THREADS=%s: `accelerate launch` "
                 "gives a CPU process 1; the stages' children get the node's cores too)", threads, torch.get_num_threads(),
                 os.environ.get("OMP_NUM_THREADS"))
        torch.set_num_threads(threads)


def stage_env(processes_per_node: int = 1, **extra: str) -> dict[str, str]:
    """The environment for a stage's child: ours minus every launcher/DeepSpeed/accelerate variable.

    `accelerate launch` sets OMP_NUM_THREADS=1 in the outer run; a stage's child instead gets the
    node's cores shared among the stage's processes on this node.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in LAUNCHER_ENV and not key.startswith(LAUNCHER_ENV_PREFIXES)
    }
    return {**env, "OMP_NUM_THREADS": str(node_threads(processes_per_node)), **extra}


def lock_output_dir(layout: Layout) -> None:
    """Refuse to share `domino.output_dir` with another run: two runs would interleave their shards.

    Taken once per run (rank 0, or a single-stage command) and held until the process exits.
    """
    from filelock import FileLock, Timeout

    layout.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(layout.lock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = layout.lock_owner.read_text().strip() if layout.lock_owner.exists() else "unknown"
        raise StageError(
            f"domino.output_dir: {layout.root} is in use by another run ({who}); wait for it to finish or set "
            "another domino.output_dir."
        ) from None
    layout.lock_owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
    _held_locks.append(lock)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def log_to(log_path: Path) -> Iterator[None]:
    """Also write the plugin's log records to `log_path` while a stage runs in this process (as a child's would be)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s"))
    logger = logging.getLogger("axolotl.integrations.domino")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def run_child(command: list[str], log_path: Path, env: dict[str, str]) -> None:
    """Run a stage, streaming its output to our stderr and to `log_path`; raise StageError on failure."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            sys.stderr.write(line)
            log.write(line)
        code = proc.wait()
    if code != 0:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        ours = child_error(lines)
        if ours is not None:  # the child explained itself: its message is the error, not its log
            raise StageError(f"{ours}\n(in the stage command {' '.join(command)}; its log: {log_path})")
        tail = "\n".join(lines[-40:])
        raise StageError(f"domino: stage command failed (exit {code}): {' '.join(command)}\nlog: {log_path}\n{tail}")


def child_error(lines: list[str]) -> str | None:
    """The last message a child printed through `user_errors` (without its `domino: error:` prefix), if any."""
    starts = [i for i, line in enumerate(lines) if line.startswith(ERROR_PREFIX)]
    if not starts:
        return None
    message = [lines[starts[-1]].removeprefix(ERROR_PREFIX)]
    for line in lines[starts[-1] + 1:]:
        if line.startswith(DEBUG_HINT):
            break
        message.append(line)
    return "\n".join(message).strip()
