"""Resumable, rank-sharded work: fixed shards of sample indices, each shard one file written once.

A shard file exists under its final name only once it is complete (`files.write_atomic`), so after
`kill -9` at any moment a rerun redoes exactly the missing shards: nothing lost, nothing twice, no
partial record. Ranks take shards round-robin and wait for each other by polling for files, never
in a collective, so a long stage cannot trip the process group's timeout.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

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


def wait_until(done: Callable[[], bool], what: str, poll_seconds: float = 2.0) -> None:
    """Poll until `done()` (another rank's or process's output is in place); log once a minute."""
    started, last_log = time.monotonic(), time.monotonic()
    while not done():
        if time.monotonic() - last_log > 60:
            LOG.info("domino: waiting for %s (%.0f s)", what, time.monotonic() - started)
            last_log = time.monotonic()
        time.sleep(poll_seconds)


def wait_for(paths: list[Path], what: str) -> None:
    """Block until every path exists (other ranks' shards, or rank 0's merged output)."""
    wait_until(lambda: all(p.exists() for p in paths), what)
