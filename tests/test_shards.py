"""Ranks waiting on each other through files: heartbeats, timeouts with the cause, the shared-folder check."""

from __future__ import annotations

import threading
import time

import pytest

from axolotl_domino.launch import Launch
from axolotl_domino.shards import Heartbeat, WaitTimeout, check_shared_dir, launch_id, wait_until


def test_a_wait_on_a_heartbeat_that_never_appears_fails_with_the_cause(tmp_path):
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"rank0.heartbeat never appeared for 0 s\..*shared filesystem"):
        wait_until(lambda: False, "rank 0", alive=[tmp_path / "rank0.heartbeat"], stale_after_s=0.3, poll_seconds=0.05)
    assert time.monotonic() - started < 5


def test_a_live_heartbeat_keeps_the_wait_going_and_a_stopped_one_ends_it(tmp_path):
    beat = tmp_path / "rank1.heartbeat"
    done = threading.Event()
    threading.Timer(1.0, done.set).start()
    with Heartbeat(beat, interval_s=0.05):  # longer than stale_after_s in all, but alive throughout
        wait_until(done.is_set, "rank 1", alive=[beat], stale_after_s=0.3, poll_seconds=0.05)
    with pytest.raises(WaitTimeout, match="stopped changing"):
        wait_until(lambda: False, "rank 1", alive=[beat], stale_after_s=0.3, poll_seconds=0.05)


def test_every_rank_must_see_the_same_folder(tmp_path):
    def run(folders: list, timeout: float) -> list:
        errors: list = [None, None]

        def rank(r: int) -> None:
            try:
                check_shared_dir(folders[r], r, 2, timeout, poll_seconds=0.05)
            except WaitTimeout as exc:
                errors[r] = str(exc)

        threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors

    assert run([tmp_path / "shared", tmp_path / "shared"], timeout=10) == [None, None]
    zero, one = run([tmp_path / "node-a", tmp_path / "node-b"], timeout=0.5)  # node-local disks
    assert "rank 0 does not see ranks [1]" in zero and "shared filesystem" in zero
    assert "rank 1" in one and "does not see rank 0" in one


def test_launch_id_is_shared_by_the_ranks_of_one_launch(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "node7")
    monkeypatch.setenv("MASTER_PORT", "29500")
    first = launch_id()
    monkeypatch.setenv("RANK", "3")  # rank-specific variables do not enter it
    assert launch_id() == first
    monkeypatch.setenv("MASTER_PORT", "29501")
    assert launch_id() != first


@pytest.mark.parametrize("env,expected", [
    ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, 8),
    ({"WORLD_SIZE": "16", "SLURM_NTASKS_PER_NODE": "4(x4)"}, 4),
    ({"WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 2),
    ({"WORLD_SIZE": "16"}, 1),  # no launcher variable, no GPU: never the whole world on one node
    ({}, 1),
])
def test_local_world_size_comes_from_the_launcher_never_from_world_size(monkeypatch, env, expected):
    for key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Launch.from_env().local_world_size == expected


def test_rank_device_wraps_when_each_task_sees_one_gpu(monkeypatch):
    import torch

    from axolotl_domino.hf import rank_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES holds this task's GPU only
    assert rank_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert rank_device() == torch.device("cuda", 3)
