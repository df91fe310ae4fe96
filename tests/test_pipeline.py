"""Pipeline plumbing that needs no model: stage environment, output lock, dataset wiring, keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from axolotl.utils.dict import DictDefault

from axolotl_domino.errors import ConfigError
from axolotl_domino.args import DominoConfig, ResponsesConfig
from axolotl_domino.endpoint import EndpointError
from axolotl_domino.files import DataFileError
from axolotl_domino.launch import Launch, StageError, lock_output_dir, stage_env
from axolotl_domino.layout import Layout
from axolotl_domino.pipeline import (
    SYNTHETIC,
    _usable_checkpoints,
    check_vllm_launch,
    induction_config,
    induction_status,
    inherited_settings,
    induction_key,
    preflight,
    in_process,
    synthesis_env,
    use_synthetic_dataset,
)
from axolotl_domino.synthesize import SynthesisResult

REPO = Path(__file__).resolve().parents[1]


def _domino(tmp_path: Path, **induction) -> DominoConfig:
    refs = tmp_path / "refs.jsonl"
    if not refs.exists():
        refs.write_text('{"text": "write a function"}\n{"text": "find the sum"}\n')
    return DominoConfig.model_validate(
        {"references": {"path": str(refs)}, "output_dir": str(tmp_path / "out"), "induction": induction}
    )


def test_stage_env_drops_the_outer_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED", "TORCHELASTIC_RUN_ID"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch sets in the outer run
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # the cores this process may use
    env = stage_env(2, LOCAL_RANK="1")
    assert env["LOCAL_RANK"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["OMP_NUM_THREADS"] == "4"  # the node's cores shared by the stage's 2 processes
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED", "TORCHELASTIC_RUN_ID"} & set(env)


def test_second_run_on_the_same_output_dir_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from axolotl_domino.launch import "
         f"lock_output_dir; from axolotl_domino.layout import Layout; lock_output_dir(Layout(Path({str(tmp_path)!r}))); "
         "print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageError, match=rf"is in use by another run \(pid {holder.pid} on"):
            lock_output_dir(Layout(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    lock_output_dir(Layout(tmp_path))  # the OS released the dead holder's lock


def test_synthetic_dataset_replaces_the_marker_or_is_appended(tmp_path):
    result = SynthesisResult(
        dataset=tmp_path / "synthetic-abc.chat_template.jsonl",
        manifest={"format": "chat_template", "counts": {"kept": 3, "generated": 4}},
    )
    cfg = DictDefault({"datasets": [{"path": "mine.jsonl", "type": "alpaca"}, {"path": SYNTHETIC, "type": "completion"}]})
    use_synthetic_dataset(cfg, result)
    assert cfg.datasets[0].path == "mine.jsonl"
    assert cfg.datasets[1].path == str(result.dataset) and cfg.datasets[1].type == "chat_template"
    cfg = DictDefault({"datasets": [{"path": "mine.jsonl", "type": "alpaca"}]})
    use_synthetic_dataset(cfg, result)
    assert [d.path for d in cfg.datasets] == ["mine.jsonl", str(result.dataset)]


@pytest.mark.parametrize(
    "lost, fix",
    [
        ("dropped_unfinished", "domino.synthesis.keep_unfinished: true"),
        ("dropped_response_unfinished", "domino.responses.keep_unfinished: true"),
        ("dropped_empty", "domino.synthesis.temperature"),
        ("removed_by_filters", "domino.filters"),
    ],
)
def test_no_kept_sample_is_a_clear_error_naming_the_key_to_change(tmp_path, lost, fix):
    counts = {"kept": 0, "generated": 5, lost: 5}
    result = SynthesisResult(dataset=tmp_path / "x.jsonl", manifest={"format": "completion", "counts": counts})
    with pytest.raises(StageError, match="none of the 5 synthetic samples was kept") as error:
        use_synthetic_dataset(DictDefault({"datasets": []}), result)
    assert fix in str(error.value)
    assert ("keep_unfinished" in str(error.value)) == lost.endswith("unfinished")  # only the fix that applies


def test_most_samples_lost_is_a_warning_and_min_kept_makes_it_an_error(tmp_path, caplog):
    counts = {"kept": 2, "generated": 10, "dropped_unfinished": 8}
    result = SynthesisResult(dataset=tmp_path / "x.jsonl", manifest={"format": "completion", "counts": counts})
    with caplog.at_level("WARNING", logger="axolotl.integrations.domino.pipeline"):
        use_synthetic_dataset(DictDefault({"datasets": []}), result)
    assert "only 2 of 10 synthetic samples were kept" in caplog.text and "max_new_tokens" in caplog.text
    with pytest.raises(StageError, match=r"only 2 of 10 .*fewer than domino.synthesis.min_kept \(3\).*max_new_tokens"):
        use_synthetic_dataset(DictDefault({"datasets": []}), result, min_kept=3)
    caplog.clear()
    enough = SynthesisResult(dataset=tmp_path / "x.jsonl", manifest={"format": "completion", "counts": {"kept": 6, "generated": 10}})
    use_synthetic_dataset(DictDefault({"datasets": []}), enough)
    assert "were kept" not in caplog.text


def test_induction_key_follows_content_and_settings_not_the_path(tmp_path):
    domino = _domino(tmp_path)
    key = induction_key(domino, induction_config(domino, "model", {}))
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_text((tmp_path / "refs.jsonl").read_text())
    domino_moved = domino.model_copy(update={"references": domino.references.model_copy(update={"path": str(moved)})})
    assert induction_key(domino_moved, induction_config(domino_moved, "model", {})) == key
    assert induction_key(domino, induction_config(domino, "other-model", {})) != key
    changed = _domino(tmp_path, learning_rate=0.5)
    assert induction_key(changed, induction_config(changed, "model", {})) != key
    no_checkpoints = _domino(tmp_path, save_steps=0)  # how often it checkpoints does not change D*
    assert induction_key(no_checkpoints, induction_config(no_checkpoints, "model", {})) == key
    (tmp_path / "refs.jsonl").write_text('{"text": "write a function"}\n{"text": "find the product"}\n')
    assert induction_key(domino, induction_config(domino, "model", {})) != key


def _checkpoint(layout: Layout, step: int, state: str | None) -> Path:
    folder = layout.adapter / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_resume_uses_only_complete_checkpoints_of_the_same_inputs(tmp_path):
    layout = Layout(tmp_path)
    complete = _checkpoint(layout, 4, '{"global_step": 4}')
    _checkpoint(layout, 6, None)  # killed before the Trainer wrote its state
    _checkpoint(layout, 8, '{"global_st')  # killed while writing it
    assert _usable_checkpoints(layout, "key-a") == [complete]
    assert sorted(p.name for p in layout.adapter.glob("checkpoint-*")) == ["checkpoint-4"]
    assert _usable_checkpoints(layout, "key-a") == [complete]  # same inputs: kept
    assert _usable_checkpoints(layout, "key-b") == [] and not list(layout.adapter.glob("checkpoint-*"))  # inputs changed


def test_induction_config_is_an_axolotl_domino_prompt_run(tmp_path):
    domino = _domino(tmp_path, micro_batch_size=4, axolotl={"logging_steps": 1})
    config = induction_config(domino, "model", {"bf16": False})
    assert config["adapter"] == "domino_prompt" and config["micro_batch_size"] == 4
    assert config["bf16"] is False and config["logging_steps"] == 1
    assert config["output_dir"].endswith("out/induction/adapter")
    # The diagnostics sample with the synthesis settings and measure with the scorecard's.
    assert config["domino"]["synthesis"]["temperature"] == domino.synthesis.temperature
    assert config["domino"]["score"]["memorization_threshold"] == domino.score.memorization_threshold
    assert "responses" not in config["domino"] and "filters" not in config["domino"]


def test_diagnostics_settings_change_the_induction_key_only_when_they_choose_d(tmp_path):
    def key(temperature: float = 0.8, **induction) -> str:
        domino = _domino(tmp_path, **induction)
        domino.synthesis.temperature = temperature
        return induction_key(domino, induction_config(domino, "model", {}))

    last = key()
    assert key(eval_steps=10, eval_samples=4, temperature=0.3) == last  # keep: last: D* is the same
    best = key(keep="best")
    assert best != last
    assert key(keep="best", eval_steps=10) != best and key(keep="best", temperature=0.3) != best


def test_preflight_names_the_key_and_the_fix(tmp_path, tiny_model_dir):
    def config(k: int = 4, **update) -> DominoConfig:
        domino = _domino(tmp_path, num_domain_tokens=k, num_sample_tokens=k)
        domino.references.max_tokens = 64
        return domino.model_copy(update=update)

    preflight(config(), str(tiny_model_dir))  # fine
    with pytest.raises(StageError, match="base_model: ./nowhere does not exist.*prepare-model"):
        preflight(config(), "./nowhere")
    with pytest.raises(StageError, match="= 665 tokens exceeds the model's context of 512"):  # 300 + 300 + 64 + 1
        preflight(config(k=300), str(tiny_model_dir))
    with pytest.raises(StageError, match="domino.output_dir: cannot write"):
        preflight(config(output_dir=str(tmp_path / "refs.jsonl" / "out")), str(tiny_model_dir))  # under a file
    zero3 = config()
    zero3.induction.axolotl = {"deepspeed": "zero3"}
    preflight(zero3, str(tiny_model_dir))  # fine with keep: last
    with pytest.raises(ConfigError, match="domino.induction.axolotl.deepspeed: under ZeRO-3 the induction diagnostics"):
        zero3.induction.keep = "best"
        preflight(zero3, str(tiny_model_dir))
    empty = tmp_path / "heldout.jsonl"
    empty.write_text("")
    with_heldout = config()
    with_heldout.score.heldout_path = str(empty)  # read by the induction's diagnostics: fail before they start
    with pytest.raises(DataFileError, match="domino.score.heldout_path: .*heldout.jsonl holds no samples"):
        preflight(with_heldout, str(tiny_model_dir))
    served = config()
    served.responses = ResponsesConfig(enabled=True, endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                                               "api_key_env": "DOMINO_UNSET_KEY"})
    with pytest.raises(EndpointError, match="domino.responses.endpoint.api_key_env: .*DOMINO_UNSET_KEY is not set"):
        preflight(served, str(tiny_model_dir))
    (tmp_path / "refs.jsonl").write_text('{"text": "only one"}\n')
    with pytest.raises(DataFileError, match="at least 2"):
        preflight(config(), str(tiny_model_dir))


def test_the_induction_reports_to_the_users_trackers_as_its_own_run_without_changing_its_key(tmp_path):
    outer = {"bf16": False, "use_wandb": True, "wandb_project": "proj", "wandb_name": "sft", "wandb_run_id": "abc",
             "use_tensorboard": True, "learning_rate": 0.1}
    settings = inherited_settings(outer)
    assert settings == {"bf16": False, "use_wandb": True, "wandb_project": "proj", "wandb_name": "sft-domino-induction",
                        "use_tensorboard": True}  # never the SFT's run id (it would resume that run), never SFT keys
    domino = _domino(tmp_path)
    config = induction_config(domino, "model", settings)
    assert config["wandb_project"] == "proj" and config["use_tensorboard"] is True
    assert induction_key(domino, config) == induction_key(domino, induction_config(domino, "model", {"bf16": False}))
    off = _domino(tmp_path, axolotl={"use_wandb": False})  # the user's override wins
    assert induction_config(off, "model", settings)["use_wandb"] is False


def test_synthesis_runs_in_process_only_for_one_cpu_process_on_the_hf_backend(tmp_path, monkeypatch):
    import torch

    domino = _domino(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert in_process(domino, Launch(0, 0, 1, 1))
    assert not in_process(domino, Launch(0, 0, 2, 2))  # ranks: each rank's child, rank 0 merges
    domino.synthesis.backend = "vllm"
    assert not in_process(domino, Launch(0, 0, 1, 1))
    domino.synthesis.backend = "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not in_process(domino, Launch(0, 0, 1, 1))  # a GPU: the child gives all its memory back to the SFT


def test_each_ranks_vllm_engine_gets_its_own_gpu_and_tensor_parallel_over_ranks_is_refused(tmp_path, monkeypatch):
    domino = _domino(tmp_path)
    domino.synthesis.backend = "vllm"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    env = synthesis_env(domino, Launch(rank=5, local_rank=1, world_size=8, local_world_size=4))
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["LOCAL_RANK"] == "0"  # not every engine on the first GPU
    single = synthesis_env(domino, Launch(rank=0, local_rank=0, world_size=1, local_world_size=1))
    assert single["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"  # one process: it keeps every GPU (tensor parallelism)
    domino.synthesis.backend = "hf"
    assert synthesis_env(domino, Launch(5, 1, 8, 4))["LOCAL_RANK"] == "1"  # the HF sampler picks cuda:LOCAL_RANK

    domino.synthesis.backend, domino.synthesis.tensor_parallel_size = "vllm", 2
    check_vllm_launch(domino, Launch(0, 0, 1, 1))  # one process owning 2 GPUs: fine
    with pytest.raises(StageError, match="tensor_parallel_size: 2 needs one process.*8 ranks"):
        check_vllm_launch(domino, Launch(0, 0, 8, 8))


def test_a_login_node_that_resolves_precision_otherwise_still_sees_the_gpu_induction_as_done(tmp_path):
    domino = _domino(tmp_path)
    layout = Layout.of(domino)
    on_gpu = {"bf16": True, "tf32": True}  # `bf16: auto` on the GPU node that trained
    config = induction_config(domino, "model", on_gpu)
    layout.induction.mkdir(parents=True)
    layout.adapter.mkdir()
    (layout.induction / "induce-k.yaml").write_text(yaml.safe_dump(config))
    layout.induction_done.write_text(json.dumps({"key": induction_key(domino, config), "config": "induce-k.yaml"}))

    on_login_node = {"bf16": False}  # the CPU-safe defaults, no tf32
    assert induction_status(domino, "model", on_gpu).startswith("induction: up to date (")
    status = induction_status(domino, "model", on_login_node)
    assert status.startswith("induction: up to date (with {'bf16': True, 'tf32': True} as resolved where it ran")
    domino.induction.learning_rate = 0.5  # a real change is still one
    assert induction_status(domino, "model", on_login_node).startswith("induction: missing or stale")


def test_stage_estimates_are_logged_as_stages_start_and_never_stop_the_run(tmp_path, tiny_model_dir, caplog, monkeypatch):
    from axolotl_domino import estimate
    from axolotl_domino.pipeline import StageEstimates

    domino = _domino(tmp_path, num_domain_tokens=2, num_sample_tokens=2, micro_batch_size=2, eval_steps=0)
    domino.synthesis.num_samples, domino.synthesis.max_new_tokens = 4, 4
    cfg = DictDefault({"base_model": str(tiny_model_dir), "domino": domino.model_dump(), "micro_batch_size": 1,
                       "sequence_len": 64, "adapter": "lora"})
    with caplog.at_level("INFO", logger="axolotl.integrations.domino"):
        estimates = StageEstimates(domino, str(tiny_model_dir), cfg, {}, Launch(0, 0, 1, 1))
        estimates.log("induction")
        estimates.log("sft", kept=3)
    assert "(induction, synthesis, filters, scorecard, sft)" in caplog.text  # no responses: they are off
    assert "domino: induction: about" in caplog.text and "domino: sft: about" in caplog.text
    assert "3 micro-batches of 1 x 64 tokens" in caplog.text  # the 3 rows kept, one a micro-batch, padded to 64
    caplog.clear()

    def broken(*args, **kwargs):
        raise RuntimeError("no slice today")

    monkeypatch.setattr(estimate, "plan_run", broken)
    with caplog.at_level("INFO", logger="axolotl.integrations.domino"):
        estimates = StageEstimates(domino, str(tiny_model_dir), cfg, {}, Launch(0, 0, 1, 1))
        estimates.log("induction")
    assert "no time estimates for this run (RuntimeError: no slice today)" in caplog.text
    assert "induction: about" not in caplog.text
    assert StageEstimates(domino, str(tiny_model_dir), cfg, {}, Launch(1, 1, 2, 2)).plan is None  # rank 0 alone
