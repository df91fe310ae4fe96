"""Resumable, rank-sharded work: fixed shards of sample indices, each shard one file written once.

A shard file exists under its final name only once it is complete (`files.write_atomic`), so after
`kill -9` at any moment a rerun redoes exactly the missing shards: nothing lost, nothing twice, no
partial record. Ranks take shards round-robin and wait for each other by polling for files, never
in a collective, so a long stage cannot trip the process group's timeout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from axolotl_domino.errors import DominoError

LOG = logging.getLogger("axolotl.integrations.domino.shards")


def shard_indices(num_samples: int, shard_size: int) -> list[list[int]]:
    """Sample indices 0..num_samples-1 cut into consecutive shards."""
    return [list(range(start, min(start + shard_size, num_samples))) for start in range(0, num_samples, shard_size)]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (torch.distributed if initialised, else the launcher's env)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def my_pending_shards(shard_file: Callable[[int], Path], num_shards: int, rank: int, world_size: int) -> list[int]:
    """This rank's shards (round-robin) whose file `shard_file(shard)` does not exist yet."""
    return [s for s in range(rank, num_shards, world_size) if not shard_file(s).exists()]


class WaitTimeout(DominoError, RuntimeError):
    """Another rank gave no sign of life for too long, or never saw our files: the message says which and why."""


NOT_SHARED = (
    "domino.output_dir must be one folder that every node sees (a shared filesystem such as NFS or Lustre), not "
    "node-local disk; if it is shared, the other rank died or hangs (see its log), or raise domino.wait_timeout_s"
)


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def wait_until(done: Callable[[], bool], what: str, alive: list[Path] | None = None,
               stale_after_s: float | None = None, poll_seconds: float = 2.0) -> None:
    """Poll until `done()` (another rank's or process's output is in place); log once a minute.

    `alive` are the heartbeat files of the ranks being waited for: when one of them does not change for
    `stale_after_s` (or never appears), the wait fails instead of hanging forever. Change is judged by
    content seen from this node, never by file times, so clocks that disagree across nodes do not matter.
    """
    started = last_log = time.monotonic()
    seen = {path: (_content(path), started) for path in alive or []}  # content, when it last changed
    while not done():
        now = time.monotonic()
        for path, (content, changed) in seen.items():
            current = _content(path)
            if current != content:
                seen[path] = (current, now)
            elif stale_after_s is not None and now - changed > stale_after_s:
                sign = "never appeared" if current is None else "stopped changing"
                raise WaitTimeout(
                    f"domino: waited {now - started:.0f} s for {what}; the heartbeat {path} {sign} for "
                    f"{stale_after_s:.0f} s. {NOT_SHARED}."
                )
        if now - last_log > 60:
            LOG.info("domino: waiting for %s (%.0f s)", what, now - started)
            last_log = now
        time.sleep(poll_seconds)


def wait_for(paths: list[Path], what: str, alive: list[Path] | None = None, stale_after_s: float | None = None) -> None:
    """Block until every path exists (other ranks' shards, or rank 0's merged output)."""
    wait_until(lambda: all(p.exists() for p in paths), what, alive, stale_after_s)


class Heartbeat:
    """This rank's sign of life for the ranks waiting on it: a file rewritten every `interval_s` by a daemon thread."""

    def __init__(self, path: Path, interval_s: float = 10.0):
        self.path, self.interval_s = Path(path), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="domino-heartbeat", daemon=True)

    def _beat(self) -> None:
        beat = 0
        while True:
            beat += 1
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # the stage child may beat on it too
            tmp.write_text(f"{os.getpid()} {beat}\n")
            os.replace(tmp, self.path)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def check_shared_dir(folder: Path, rank: int, world_size: int, timeout_s: float, poll_seconds: float = 1.0) -> None:
    """Every rank proves it sees the same `folder` before any stage starts, else a clear error in seconds.

    Each rank writes `rank<r>` into `folder` (one per launch, see `launch_id`); rank 0 waits for all of them,
    then writes `ok`, which the others wait for.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    deadline = time.monotonic() + timeout_s
    if rank == 0:
        while missing := [r for r in range(world_size) if not (folder / f"rank{r}").exists()]:
            if time.monotonic() > deadline:
                raise WaitTimeout(
                    f"domino: rank 0 does not see ranks {missing} in {folder} after {timeout_s:.0f} s. {NOT_SHARED}."
                )
            time.sleep(poll_seconds)
        (folder / "ok").write_text("")
        return
    while not (folder / "ok").exists():
        if time.monotonic() > deadline:
            raise WaitTimeout(
                f"domino: rank {rank} ({socket.gethostname()}) does not see rank 0 in {folder} after {timeout_s:.0f} s. "
                f"{NOT_SHARED}."
            )
        time.sleep(poll_seconds)


def launch_id() -> str:
    """The same string on every rank of one launch (and another for the next launch), from the launcher's variables."""
    keys = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")
    parts = "|".join(os.environ.get(key, "") for key in keys)
    return hashlib.sha256(parts.encode()).hexdigest()[:16]
