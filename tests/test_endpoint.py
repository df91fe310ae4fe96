"""The OpenAI-compatible endpoint client's contract without a server: its errors and what keys a run.

The client against a real server (`transformers serve` on the embedded model) is in
integration_tests/test_endpoint_e2e.py.
"""

from __future__ import annotations

import socket

import pytest

from axolotl_domino.args import DominoConfig, EndpointConfig
from axolotl_domino.endpoint import EndpointChat, EndpointError
from axolotl_domino.synthesize import run_key


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_not_there_is_an_error_naming_the_key_the_url_and_the_fix():
    settings = EndpointConfig(base_url=f"http://127.0.0.1:{_closed_port()}/v1", model="m", max_retries=0, timeout_s=5)
    chat = EndpointChat(settings, "domino.responses.endpoint")
    with pytest.raises(EndpointError, match=r"domino.responses.endpoint: http://127.0.0.1:\d+/v1 did not answer after 0 "
                       r"retries .*check that the server is running"):
        chat([[{"role": "user", "content": "hi"}]], max_new_tokens=4)


def test_a_missing_api_key_variable_is_an_error_before_any_request(monkeypatch):
    monkeypatch.delenv("DOMINO_TEST_KEY", raising=False)
    settings = EndpointConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="DOMINO_TEST_KEY")
    with pytest.raises(EndpointError, match="domino.filters.judge.endpoint.api_key_env: the environment variable "
                       "DOMINO_TEST_KEY is not set"):
        EndpointChat(settings, "domino.filters.judge.endpoint")


def test_how_requests_travel_does_not_change_the_run_key_what_is_asked_does(tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"text": "a"}\n')

    def key(endpoint=None):
        responses = {"enabled": True, **({"endpoint": endpoint} if endpoint else {})}
        domino = DominoConfig.model_validate({"references": {"path": str(refs)}, "responses": responses})
        return run_key(domino, "base", "ab" * 32)

    server = {"base_url": "http://h:8000/v1", "model": "m"}
    assert key(server) != key()  # a server's model answers, not the local one
    assert key({**server, "concurrency": 32, "max_retries": 9, "timeout_s": 5, "api_key_env": "K"}) == key(server)
    assert key({**server, "model": "other"}) != key(server)
