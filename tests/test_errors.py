"""Our errors reach the user as their message alone; DOMINO_DEBUG=1 brings the traceback back."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from axolotl_domino.cli import domino
from axolotl_domino.errors import DominoError, user_errors
from axolotl_domino.files import DataFileError


def test_a_domino_error_becomes_its_message_and_exit_status_1(monkeypatch):
    monkeypatch.delenv("DOMINO_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        with user_errors():
            raise DataFileError("refs.jsonl line 3: no field 'text'; set domino.references.field")
    assert str(exit_.value.code).startswith("domino: error: refs.jsonl line 3: no field 'text'")
    with pytest.raises(KeyError):  # a bug of ours is not dressed up as a user error
        with user_errors():
            raise KeyError("x")
    monkeypatch.setenv("DOMINO_DEBUG", "1")
    with pytest.raises(DominoError):
        with user_errors():
            raise DataFileError("shown with its traceback")


def test_a_bad_reference_file_under_the_cli_prints_one_message_no_traceback(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("DOMINO_DEBUG", raising=False)
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"prompt": "write a function"}) + "\n")
    config = tmp_path / "domino.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(tiny_model_dir),
                                      "domino": {"references": {"path": str(refs)}, "output_dir": str(tmp_path / "out")}}))
    result = CliRunner().invoke(domino, ["induce", str(config)])
    assert result.exit_code == 1
    assert "domino: error:" in result.output and "no field 'text'" in result.output and "domino.references.field" in result.output
    assert "Traceback" not in result.output


def test_only_the_outermost_wrapper_turns_our_error_into_the_exit(monkeypatch):
    """A CLI command that loads a config through Axolotl runs the plugin's wrapped `register` inside its own
    wrapper: the inner one passes the error up, where the command may handle it (`plan` makes it a note)."""
    monkeypatch.delenv("DOMINO_DEBUG", raising=False)
    with pytest.raises(SystemExit):
        with user_errors():
            with pytest.raises(DataFileError):  # the inner wrapper let it through
                with user_errors():
                    raise DataFileError("inner")
            raise DataFileError("outer")


def test_a_gpu_only_setting_on_a_cpu_stops_register_with_our_message(monkeypatch):
    """`axolotl train` of Axolotl's lora-1b example (flash_attention: true) on a CPU: one message, status 1."""
    from axolotl_domino import cpu
    from axolotl_domino.plugin import DominoPlugin

    monkeypatch.delenv("DOMINO_DEBUG", raising=False)
    monkeypatch.setattr(cpu, "cuda_available", lambda: False)
    refs = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "data/mbpp/references_train100.jsonl")
    with pytest.raises(SystemExit) as exit_:
        DominoPlugin().register({"flash_attention": True, "adapter": "lora", "domino": {"references": {"path": refs}}})
    message = str(exit_.value.code)
    assert message.startswith("domino: error: No CUDA device is available")
    assert "flash_attention: true needs CUDA; remove it" in message


def test_a_misspelt_block_is_named_since_the_plugin_would_do_nothing(caplog):
    from axolotl_domino.plugin import DominoPlugin

    with caplog.at_level("WARNING", logger="axolotl.integrations.domino"):
        DominoPlugin().register({"Dommino": {"references": {"path": "x.jsonl"}}})
    assert "top-level key `Dommino`; did you mean `domino:`?" in caplog.text


def test_a_failed_stage_child_that_explained_itself_shows_its_message_not_its_log(tmp_path):
    import sys

    from axolotl_domino.launch import StageError, run_child

    script = "import sys; print('load' + 'ing...'); sys.exit('domino: error: refs.jsonl:3: invalid JSON\\n(DOMINO_DEBUG=1 shows the traceback)')"
    with pytest.raises(StageError) as info:
        run_child([sys.executable, "-c", script], tmp_path / "child.log", {})
    assert str(info.value).startswith("refs.jsonl:3: invalid JSON\n(in the stage command")
    assert "loading..." not in str(info.value) and str(tmp_path / "child.log") in str(info.value)
    with pytest.raises(StageError) as info:  # a child that crashed without our message: its log's tail
        run_child([sys.executable, "-c", "print('loading...'); raise KeyError('x')"], tmp_path / "crash.log", {})
    assert "stage command failed (exit 1)" in str(info.value) and "KeyError" in str(info.value)
