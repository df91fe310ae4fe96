"""Responses and judge verdicts from a real OpenAI-compatible server: `transformers serve` (a packaged server that
runs on this CPU; vLLM, TGI and llama.cpp speak the same API) serving the embedded SmolLM2 on 127.0.0.1.

The synthesis stage is killed with -9 while the server answers, then resumed: it must ask only what was not
answered, and the server's own access log is the count of what it was asked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_domino.args import DominoConfig, InductionConfig
from axolotl_domino.files import read_jsonl
from axolotl_domino.induce import DominoPromptModel
from axolotl_domino.synthesize import synthesize

REPO = Path(__file__).resolve().parents[1]
REQUEST = '"POST /v1/chat/completions HTTP/1.1" 200'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    """(base_url, access log) of `transformers serve` with the embedded model, ready for requests."""
    port, log = _free_port(), tmp_path_factory.mktemp("server") / "serve.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--log-level", "info", str(smollm2)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _requests(log: Path) -> int:
    return log.read_text(errors="replace").count(REQUEST)


SCRIPT = """
import json, sys
from axolotl_domino.args import DominoConfig
from axolotl_domino.synthesize import synthesize
synthesize(DominoConfig.model_validate(json.loads(sys.argv[1])), sys.argv[2], rank=0, world_size=1)
"""


def test_responses_and_judge_from_a_server_survive_a_kill_without_asking_twice(smollm2, server, tmp_path):
    base_url, log = server
    adapter = tmp_path / "adapter"  # D* = the embeddings of a task-like text: samples read like MBPP statements
    settings = InductionConfig(num_domain_tokens=8, num_sample_tokens=0, init="text",
                               init_text="Write a python function to")
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    DominoPromptModel(model, AutoTokenizer.from_pretrained(smollm2), settings, 1,
                      {"base_model": str(smollm2), "references_sha256": "ab" * 32}).save_pretrained(str(adapter))
    del model
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"text": "Write a python function to add two numbers."}\n{"text": "Write a function to sort a list."}\n')
    config = {
        "references": {"path": str(refs)},
        "output_dir": str(tmp_path / "domino"),
        "synthesis": {"adapter": str(adapter), "num_samples": 6, "shard_size": 6, "max_new_tokens": 24,
                      "keep_unfinished": True, "temperature": 0.8},
        "responses": {"enabled": True, "max_new_tokens": 16, "keep_unfinished": True,
                      "endpoint": {"base_url": base_url, "model": str(smollm2), "concurrency": 2}},
        "score": {"enabled": False},
    }

    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(config), str(smollm2)], cwd=REPO,
                            stderr=subprocess.PIPE)
    journal_glob = "synthesis/*/responses/responses-000000.jsonl.partial"
    deadline = time.monotonic() + 300
    while not any(p.stat().st_size for p in (tmp_path / "domino").glob(journal_glob)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -9
    (journal,) = (tmp_path / "domino").glob(journal_glob)
    time.sleep(5)  # requests still in flight at the kill reach the log (answered, lost with the process)
    answered, before = len(read_jsonl(journal)), _requests(log)
    assert answered == 2

    result = synthesize(DominoConfig.model_validate(config), str(smollm2), rank=0, world_size=1)
    samples = read_jsonl(journal.parent.parent / "samples" / "samples-000000.jsonl")
    usable = [row for row in samples if row["text"]]
    assert _requests(log) - before == len(usable) - answered  # the journaled answers were not asked again
    responses = read_jsonl(journal.parent / "responses-000000.jsonl")
    assert [row["index"] for row in responses] == [row["index"] for row in usable]
    assert all(row["response"] for row in responses)
    assert result.manifest["counts"]["kept"] == len(usable)
    assert not any(row["finished"] for row in responses if len(row["response"]) < 5)  # a cut reply is not "finished"

    # The judge over the same server: a filter change only merges again, its verdicts come from the server.
    before = _requests(log)
    config["filters"] = {"judge": {"enabled": True, "keep_unparsable": True, "max_new_tokens": 32,
                                   "keep_instruction_levels": ["very poor", "poor", "average", "good", "excellent"],
                                   "endpoint": {"base_url": base_url, "model": str(smollm2), "concurrency": 2}}}
    judged = synthesize(DominoConfig.model_validate(config), str(smollm2), rank=0, world_size=1)
    (judge,) = [f for f in judged.manifest["filters"] if f["name"] == "judge"]
    asked = _requests(log) - before
    assert len(usable) <= asked <= 2 * len(usable)  # every instruction, then the responses of those kept
    assert judge["removed"] <= len(usable) and judged.manifest["counts"]["kept"] == len(usable) - judge["removed"]
