"""Replies from an OpenAI-compatible chat server the user already runs (vLLM, TGI, llama.cpp, `transformers serve`).

`EndpointChat` keeps the contract of `chat.ChatGenerator` (conversations in, one `Reply` per conversation, in
order), so the responder and the judge do not know which one answers them. The `openai` client does the
HTTP, the retries with exponential backoff (connection errors, timeouts, 429 and 5xx) and the timeouts;
this module adds the concurrency and turns a failure into a message naming the key and the fix.
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol
from urllib.parse import urlsplit

from axolotl_domino.args import EndpointConfig
from axolotl_domino.errors import DominoError
from axolotl_domino.hf import Conversation, Reply

LOG = logging.getLogger("axolotl.integrations.domino.endpoint")


class EndpointError(DominoError):
    """The server could not be reached, refused the request, or does not serve the model."""


def api_key(settings: EndpointConfig, key: str) -> str:
    """The key from `api_key_env`; a local server without auth gets a placeholder (the client needs one)."""
    if settings.api_key_env is None:
        return "no-key"
    value = os.environ.get(settings.api_key_env)
    if not value:
        raise EndpointError(
            f"{key}.api_key_env: the environment variable {settings.api_key_env} is not set; export it with the "
            f"server's API key, or remove api_key_env for a server without auth."
        )
    return value


def check_endpoint(settings: EndpointConfig, key: str) -> None:
    """Before any heavy work: a missing API key is an error; a server not reachable yet is a warning (it may be
    started while induction runs, and synthesis then fails with the same message if it still is not)."""
    api_key(settings, key)
    url = urlsplit(settings.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as exc:
        LOG.warning("domino: %s: %s is not reachable from this node now (%s); synthesis will need it.",
                    key, settings.base_url, exc.strerror or exc)


class LocalChat(Protocol):
    """What the batch size of a local chat model (`chat.ChatGenerator`) is read from."""

    def auto_batch_size(self, max_new_tokens: int, prompt_tokens: int) -> int: ...
    def prompt_tokens(self, conversations: list[Conversation]) -> int: ...


def requests_per_call(endpoint: EndpointConfig | None, batch_size: int | None, local: LocalChat | None,
                      max_new_tokens: int, conversations: list[Conversation]) -> int:
    """Conversations handed over per call: `concurrency` for a server (all in flight at once), else the local
    model's batch: `batch_size` as set, else what fits in memory for the longest of `conversations` (`local`),
    else 8 (a judge given as a function)."""
    if endpoint is not None:
        return endpoint.concurrency
    if batch_size is not None:
        return batch_size
    if local is None or not conversations:
        return 8
    return local.auto_batch_size(max_new_tokens, local.prompt_tokens(conversations))


class EndpointChat:
    """Chat completions from `settings.base_url`, `settings.concurrency` requests at a time.

    `key` is the config key of the endpoint block (e.g. `domino.responses.endpoint`), for the errors.
    """

    def __init__(self, settings: EndpointConfig, key: str):
        from openai import OpenAI

        self.settings, self.key = settings, key
        self.client = OpenAI(
            base_url=settings.base_url,
            api_key=api_key(settings, key),
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )

    def __call__(
        self,
        conversations: list[Conversation],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[Reply]:
        """One reply per conversation; conversation i is sent with seed `seed + i` (servers may ignore it)."""
        with ThreadPoolExecutor(self.settings.concurrency) as pool:
            return list(
                pool.map(
                    lambda i: self._ask(conversations[i], max_new_tokens, temperature, top_p, seed + i),
                    range(len(conversations)),
                )
            )

    def _ask(self, turns: Conversation, max_new_tokens: int, temperature: float, top_p: float, seed: int) -> Reply:
        import openai

        where = f"{self.key}: {self.settings.base_url}"
        try:
            completion = self.client.chat.completions.create(
                model=self.settings.model,
                messages=turns,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
        except openai.APIConnectionError as exc:  # includes timeouts, after the client's retries
            raise EndpointError(
                f"{where} did not answer after {self.settings.max_retries} retries ({exc}); check that the server "
                f"is running and reachable from this node, or raise {self.key}.timeout_s / max_retries."
            ) from exc
        except openai.APIStatusError as exc:
            hint = {
                401: f"the server refused the API key; check {self.key}.api_key_env",
                403: f"the server refused the API key; check {self.key}.api_key_env",
                404: f"the server has no model '{self.settings.model}' at this URL; check {self.key}.model "
                "(its /v1/models lists what it serves) and that base_url ends in /v1",
            }.get(exc.status_code, f"check {self.key} and the server's log")
            raise EndpointError(f"{where} answered HTTP {exc.status_code}: {exc.message}; {hint}.") from exc
        choice = completion.choices[0]
        return Reply((choice.message.content or "").strip(), choice.finish_reason == "stop")
