"""The one-YAML pipeline: induction -> synthesis -> Axolotl's own SFT on the synthetic dataset.

Called from the plugin's `load_datasets` hook on every rank. Each stage runs in a child process
with the launcher's distributed and DeepSpeed/accelerate environment removed, so the outer run's
state (e.g. ZeRO-3 partitioning every `from_pretrained`) cannot leak into it, and its GPU memory
is returned before SFT starts. Ranks wait for each other's outputs by polling files, never in a
collective, so a long stage cannot trip `ddp_timeout`. A stage whose output is up to date (keyed
by the hash of its inputs) is skipped.

- induction: global rank 0 runs `axolotl train` on a derived `adapter: domino_prompt` YAML,
  data-parallel over this node's ranks (torchrun) when there are several;
- synthesis: every rank runs its share of shards (`synthesize.py`), rank 0 merges;
- SFT: `cfg.datasets` is pointed at the content-addressed synthetic file and Axolotl trains
  with the YAML's adapter, DeepSpeed and so on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from axolotl_domino.args import DominoConfig
from axolotl_domino.references import read_references
from axolotl_domino.shards import wait_until, write_atomic
from axolotl_domino.synthesize import SynthesisResult, default_adapter_dir, finished

LOG = logging.getLogger("axolotl.integrations.domino.pipeline")

SYNTHETIC = "domino:synthetic"  # a `datasets:` path the plugin replaces with the synthetic file
CHECKPOINT_KEY_FILE = "checkpoints.key"  # the induction key the adapter folder's checkpoint-* belong to
STAGE_FILE = "domino_stage.json"
# Model-loading and precision keys of the outer YAML that the induction run inherits.
MODEL_KEYS = ("base_model_config", "tokenizer_config", "trust_remote_code", "bf16", "fp16", "tf32", "attn_implementation")
LAUNCHER_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
)
LAUNCHER_ENV_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "DEEPSPEED_", "FSDP_", "OMPI_", "PMI_")
LOCK_HELD_ENV = "DOMINO_OUTPUT_LOCK_HELD"  # set for our own stage children: their parent holds the lock
_held_locks: list[Any] = []  # kept for the life of the process; the OS releases them on exit, even on kill -9


class StageError(RuntimeError):
    """A stage's child process failed; the message carries the command and the tail of its log."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the outer launch."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @classmethod
    def from_env(cls) -> "Launch":
        world = int(os.environ.get("WORLD_SIZE", 1))
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=world,
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        )


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
    threads = str(max(1, (os.cpu_count() or 1) // processes_per_node))
    return {**env, LOCK_HELD_ENV: "1", "OMP_NUM_THREADS": threads, **extra}


def lock_output_dir(output_dir: str | Path) -> None:
    """Refuse to share `domino.output_dir` with another run: two runs would interleave their shards.

    Taken once per run (rank 0, or a single-stage command) and held until the process exits.
    """
    from filelock import FileLock, Timeout

    if os.environ.get(LOCK_HELD_ENV):
        return
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".domino.lock")
    owner = folder / ".domino.lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = owner.read_text().strip() if owner.exists() else "unknown"
        raise StageError(
            f"domino.output_dir: {folder} is in use by another run ({who}); wait for it to finish or set "
            "another domino.output_dir."
        ) from None
    owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
    _held_locks.append(lock)


def model_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The outer YAML's model-loading and precision keys that are set."""
    return {key: config[key] for key in MODEL_KEYS if config.get(key) is not None}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- checks before any heavy work -------------------------------------------------------------


def preflight(domino: DominoConfig, base_model: str, trust_remote_code: bool = False) -> None:
    """Fail in seconds, naming the key and the fix, on inputs that would fail an hour in."""
    from transformers import AutoConfig, AutoTokenizer

    from axolotl_domino.references import chat_turn_header

    if base_model.startswith((".", "/", "~")) and not Path(base_model).expanduser().exists():
        raise StageError(
            f"base_model: {base_model} does not exist. For the embedded model run `make model` or "
            f"`axolotl domino prepare-model smollm2-135m-instruct --output {base_model}`."
        )
    output = Path(domino.output_dir)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StageError(f"domino.output_dir: cannot write to {output} ({exc.strerror}); choose a writable folder.") from None
    read_references(domino.references.path, domino.references.field, min_count=1 if domino.induction.l1_only else 2)
    if domino.synthesis.adapter is None:
        context = getattr(AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code).get_text_config(),
                          "max_position_embeddings", None)
        needed = domino.induction.num_domain_tokens + domino.induction.num_sample_tokens + domino.references.max_tokens + 1
        if context is not None and needed > context:
            raise StageError(
                f"domino.references.max_tokens: k + l + max_tokens + EOS = {needed} tokens exceeds the model's "
                f"context of {context}; lower max_tokens, num_domain_tokens or num_sample_tokens."
            )
    if domino.references.format == "chat":
        chat_turn_header(AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code), domino.references.chat_role)


# --- induction -------------------------------------------------------------------------------


def induction_dir(domino: DominoConfig) -> Path:
    return default_adapter_dir(domino).parent


def induction_config(domino: DominoConfig, base_model: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `adapter: domino_prompt` Axolotl config the induction stage trains with."""
    ind, folder = domino.induction, induction_dir(domino)
    config = {
        "base_model": base_model,
        **settings,
        "plugins": ["axolotl_domino.DominoPlugin"],
        "adapter": "domino_prompt",
        "domino": domino.model_dump(mode="json", exclude_none=True, include={"references", "induction", "output_dir", "cpu_safe_defaults"}),
        "sequence_len": domino.references.max_tokens + 1,
        "sample_packing": False,
        "micro_batch_size": ind.micro_batch_size,
        "gradient_accumulation_steps": ind.gradient_accumulation_steps,
        "num_epochs": ind.num_epochs,
        "learning_rate": ind.learning_rate,
        "lr_scheduler": ind.lr_scheduler,
        "optimizer": "adamw_torch",
        "seed": ind.seed,  # Axolotl shuffles with cfg.seed (random when unset): same seed, same D*
        "logging_steps": 5,
        **_checkpointing(ind.save_steps),
        "output_dir": str(default_adapter_dir(domino)),
        "dataset_prepared_path": str(folder / "prepared"),
    }
    if ind.max_steps:
        config["max_steps"] = ind.max_steps
    return {**config, **ind.axolotl}


def _checkpointing(save_steps: int) -> dict[str, Any]:
    if not save_steps:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1, "auto_resume_from_checkpoints": True}


def induction_key(domino: DominoConfig, config: Mapping[str, Any]) -> str:
    """Hash of the induction inputs: reference contents, the derived config (settings, base model).

    How often it checkpoints does not change D*, so it is left out.
    """
    refs = read_references(domino.references.path, domino.references.field)
    inputs = json.loads(json.dumps(config, default=str))
    del inputs["domino"]["references"]["path"]  # the content counts, not where it lies
    del inputs["domino"]["induction"]["save_steps"]
    for key in _checkpointing(save_steps=1):  # every key checkpointing can set
        inputs.pop(key, None)
    return _digest({"references_sha256": refs.sha256, "config": inputs})


def _usable_checkpoints(adapter: Path, key: str) -> list[Path]:
    """Keep the checkpoints a resumed run may use: this key's, and only complete ones.

    The Trainer writes trainer_state.json last, so a checkpoint killed mid-write has none (or a cut one).
    """
    key_file = adapter / CHECKPOINT_KEY_FILE
    checkpoints = sorted(adapter.glob("checkpoint-*"))
    stale = key_file.exists() and key_file.read_text().strip() != key
    usable = []
    for checkpoint in checkpoints:
        try:
            complete = not stale and bool(json.loads((checkpoint / "trainer_state.json").read_text()))
        except (OSError, ValueError):
            complete = False
        if complete:
            usable.append(checkpoint)
        else:
            LOG.info("domino: removing %s checkpoint %s", "stale" if stale else "incomplete", checkpoint)
            shutil.rmtree(checkpoint)
    adapter.mkdir(parents=True, exist_ok=True)
    write_atomic(key_file, key.encode())
    return usable


def induction_up_to_date(adapter: Path, key: str) -> bool:
    stage = adapter / STAGE_FILE
    return stage.exists() and json.loads(stage.read_text()).get("key") == key


def run_induction(domino: DominoConfig, base_model: str, settings: Mapping[str, Any], launch: Launch) -> Path:
    """Induce D* (rank 0, data-parallel over this node's ranks) unless up to date; return the adapter folder."""
    config = induction_config(domino, base_model, settings)
    key, adapter = induction_key(domino, config), Path(config["output_dir"])
    if induction_up_to_date(adapter, key):
        LOG.info("domino: induction up to date (%s), skipping", adapter)
        return adapter
    if launch.rank != 0:
        wait_until(lambda: induction_up_to_date(adapter, key), "rank 0 to finish domain induction")
        return adapter
    (adapter / STAGE_FILE).unlink(missing_ok=True)
    if _usable_checkpoints(adapter, key):
        LOG.info("domino: resuming the induction from its last checkpoint in %s", adapter)
    folder = induction_dir(domino)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"induce-{key}.yaml"
    write_atomic(config_path, yaml.safe_dump(config, sort_keys=False).encode())
    command = ["axolotl", "train", str(config_path)]
    if launch.local_world_size > 1:
        command += ["--launcher", "torchrun", "--", f"--nproc_per_node={launch.local_world_size}", f"--master_port={_free_port()}"]
    else:  # in-process: no `accelerate launch` layer holding its own copy of torch in memory
        command += ["--launcher", "python"]
    LOG.info("domino: inducing the domain: %s", " ".join(command))
    _run_child(command, folder / f"induce-{key}.log", stage_env(launch.local_world_size))
    write_atomic(adapter / STAGE_FILE, json.dumps({"key": key, "config": config_path.name}).encode())
    for checkpoint in adapter.glob("checkpoint-*"):  # D* is final; S and optimizer copies only cost disk now
        shutil.rmtree(checkpoint)
    return adapter


# --- synthesis -------------------------------------------------------------------------------


def run_synthesis(domino: DominoConfig, base_model: str, launch: Launch, trust_remote_code: bool = False) -> SynthesisResult:
    """Every rank generates its shards in a child process; rank 0's child merges."""
    done = finished(domino, base_model)
    if done is not None:
        LOG.info("domino: synthesis up to date (%s), skipping", done.dataset)
        return done
    resolved = {"base_model": base_model, "trust_remote_code": trust_remote_code, "domino": domino.model_dump(mode="json")}
    folder = Path(domino.output_dir) / "synthesis"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"synthesize-{_digest(resolved)}.json"
    write_atomic(config_path, json.dumps(resolved, indent=2).encode())
    command = [
        sys.executable, "-m", "axolotl_domino.cli", "synthesize", str(config_path),
        "--rank", str(launch.rank), "--world-size", str(launch.world_size),
    ]
    LOG.info("domino: synthesising %d samples from D* (rank %d)", domino.synthesis.num_samples, launch.rank)
    env = stage_env(launch.local_world_size, LOCAL_RANK=str(launch.local_rank))
    _run_child(command, folder / f"synthesize-rank{launch.rank}.log", env)
    result = finished(domino, base_model)
    if result is None:
        raise StageError(f"domino: synthesis finished without a manifest in {folder}; see its logs there")
    return result


# --- the pipeline ----------------------------------------------------------------------------


def run_pipeline(cfg: Any, launch: Launch | None = None) -> SynthesisResult:
    """Induction then synthesis for an Axolotl config; point its `datasets:` at the synthetic file."""
    launch = launch or Launch.from_env()
    domino = DominoConfig.model_validate(dict(cfg.domino))
    base_model = str(cfg.base_model)
    preflight(domino, base_model, bool(cfg.trust_remote_code))
    if launch.rank == 0:
        lock_output_dir(domino.output_dir)
    if domino.synthesis.adapter is None:  # an explicit D* skips induction
        run_induction(domino, base_model, model_settings(cfg), launch)
    result = run_synthesis(domino, base_model, launch, bool(cfg.trust_remote_code))
    use_synthetic_dataset(cfg, result)
    return result


def _why_none_kept(counts: dict[str, int]) -> str:
    """The fix for each way samples were lost, naming the keys to change."""
    fixes = {
        "dropped_unfinished": "samples hit max_new_tokens before EOS: raise domino.synthesis.max_new_tokens "
        "or set domino.synthesis.keep_unfinished: true",
        "dropped_response_unfinished": "responses hit max_new_tokens before EOS: raise "
        "domino.responses.max_new_tokens or set domino.responses.keep_unfinished: true",
        "dropped_empty": "samples were empty (EOS first): train the domain tokens longer or sample with a "
        "higher domino.synthesis.temperature",
        "removed_by_filters": "the filters removed the rest: loosen or disable them under domino.filters "
        "(the dataset card lists what each removed)",
    }
    return "; ".join(fix for key, fix in fixes.items() if counts.get(key)) or "check the dataset card."


def use_synthetic_dataset(cfg: Any, result: SynthesisResult) -> None:
    """Replace `domino:synthetic` entries of `datasets:` (or append) with the synthetic file."""
    counts = result.manifest["counts"]
    if counts["kept"] == 0:
        raise StageError(f"domino: none of the {counts['generated']} synthetic samples was kept ({counts}); {_why_none_kept(counts)}")
    from axolotl.utils.dict import DictDefault  # Axolotl reads dataset entries by attribute

    entry = {"path": str(result.dataset), "type": result.manifest["format"], "ds_type": "json"}
    datasets = [DictDefault(d) for d in (cfg.datasets or [])]
    if any(d.get("path") == SYNTHETIC for d in datasets):
        datasets = [DictDefault({**d, **entry}) if d.get("path") == SYNTHETIC else d for d in datasets]
    else:
        datasets.append(DictDefault(entry))
    cfg.datasets = datasets
    LOG.info("domino: fine-tuning on %s (%d samples)", result.dataset, result.manifest["counts"]["kept"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_child(command: list[str], log_path: Path, env: dict[str, str]) -> None:
    """Run a stage, streaming its output to our stderr and to `log_path`; raise StageError on failure."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            sys.stderr.write(line)
            log.write(line)
        code = proc.wait()
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-40:])
        raise StageError(f"domino: stage command failed (exit {code}): {' '.join(command)}\nlog: {log_path}\n{tail}")
