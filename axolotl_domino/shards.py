"""Resumable, rank-sharded work: fixed shards of sample indices, each file written once, atomically.

A shard file exists under its final name only once it is complete (written to a temporary name,
flushed, fsynced, renamed), so after `kill -9` at any moment a rerun redoes exactly the missing
shards: nothing lost, nothing twice, no partial record. Ranks take shards round-robin and wait
for each other by polling for files, never in a collective, so a long stage cannot trip the
process group's timeout.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

LOG = logging.getLogger("axolotl.integrations.domino.shards")


def shard_indices(num_samples: int, shard_size: int) -> list[list[int]]:
    """Sample indices 0..num_samples-1 cut into consecutive shards."""
    return [list(range(start, min(start + shard_size, num_samples))) for start in range(0, num_samples, shard_size)]


def shard_path(directory: Path, stage: str, shard: int) -> Path:
    return directory / f"{stage}-{shard:06d}.jsonl"


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (torch.distributed if initialised, else the launcher's env)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def my_pending_shards(directory: Path, stage: str, num_shards: int, rank: int, world_size: int) -> list[int]:
    """This rank's shards (round-robin) that have no complete file yet."""
    return [s for s in range(rank, num_shards, world_size) if not shard_path(directory, stage, s).exists()]


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either absent or complete, even across a crash.

    On any error (e.g. disk full) the temporary file is removed and the error propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def jsonl_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    """Canonical JSON Lines: one object per line, keys in insertion order, UTF-8, trailing newline."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # bytes.splitlines splits on \n and \r only; str.splitlines would also split on U+0085 or U+2028,
    # which json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    return [json.loads(line) for line in path.read_bytes().splitlines()]


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


def remove_temporaries(directory: Path) -> int:
    """Delete leftover temporary files of crashed writers (call only when no writer is running)."""
    leftovers = list(directory.glob(".*.tmp-*"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)
