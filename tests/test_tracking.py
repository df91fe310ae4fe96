"""Synthesis reports to the user's trackers: read back from tensorboard's event files and wandb's offline run."""

from __future__ import annotations

import json
import struct
import time

from matplotlib import pyplot as plt

from axolotl_domino.tracking import flat_numbers, report_synthesis


def _plot(path):
    figure = plt.figure(figsize=(2, 1))
    figure.gca().plot([0, 1], [1, 0])
    figure.savefig(path)
    plt.close(figure)
    return path


def test_numeric_leaves_flatten_to_slash_paths():
    tree = {"diversity": {"vendi": 3.5, "distinct": {"2": 0.4}}, "n": 7, "ok": True, "name": "x", "none": None}
    assert flat_numbers(tree) == {"diversity/vendi": 3.5, "diversity/distinct/2": 0.4, "n": 7.0}


def test_tensorboard_gets_every_metric_and_plot(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = {"counts/kept": 12.0, "samples_per_s": 3.25}
    used = report_synthesis({"use_tensorboard": True}, str(tmp_path), metrics, [_plot(tmp_path / "projection.png")])
    assert used == ["tensorboard"]
    events = EventAccumulator(str(tmp_path / "runs" / "domino-synthesis"), size_guidance={"images": 0})
    events.Reload()
    assert {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]} == {
        "domino/synthesis/counts/kept": 12.0, "domino/synthesis/samples_per_s": 3.25,
    }
    assert events.Tags()["images"] == ["domino/synthesis/projection"]


def _wandb_records(path):
    """The protobuf records of an offline run file: a 7-byte header, then a LevelDB-style log of 32 KiB blocks
    whose chunks carry a 7-byte header (crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks, block = path.read_bytes(), 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_gets_a_run_of_its_own_named_after_the_users(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    trackers = {"use_wandb": True, "wandb_project": "proj", "wandb_name": "sft", "wandb_mode": "offline"}
    used = report_synthesis(trackers, str(tmp_path), {"counts/kept": 5.0}, [_plot(tmp_path / "lengths.png")])
    assert used == ["wandb"]
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's writer is a separate process (wandb-core) that may still be flushing when `finish()` returns on a
    # loaded machine: read once its last record, `exit`, is there.
    deadline = time.monotonic() + 60
    records = list(_wandb_records(run_file))
    while "exit" not in [r.WhichOneof("record_type") for r in records]:
        assert time.monotonic() < deadline, [r.WhichOneof("record_type") for r in records]
        time.sleep(0.5)
        records = list(_wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project, run.job_type) == ("sft-domino-synthesis", "proj", "domino-synthesis")
    (history,) = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                  for r in records if r.WhichOneof("record_type") == "history"]
    assert history["domino/synthesis/counts/kept"] == 5
    image = run_file.parent / "files" / history["domino/synthesis/lengths/path"]
    assert history["domino/synthesis/lengths/_type"] == "image-file" and image.is_file()


def test_no_tracker_configured_sends_nothing(tmp_path):
    assert report_synthesis({}, str(tmp_path), {"counts/kept": 1.0}, []) == []
    assert not (tmp_path / "runs").exists()
