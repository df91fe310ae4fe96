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
