"""A client for OpenAI-compatible endpoints (OpenAI, vLLM, LoRAX, llama.cpp's server): the
completions protocol or the chat protocol, asked from a few threads at once.

The standard library is enough (urllib and a thread pool), so asking an endpoint needs no extra
dependency. A request is retried with exponential backoff on 429s, 5xx answers, timeouts,
connection errors and answers that are not the JSON the protocol promises; a request that still
fails comes back as an `Answer` with its error, never as an exception, so one bad request cannot
end a run.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from lora_recipes.evaluation.generation import Decoding

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
MAX_STOP_STRINGS = 4  # OpenAI rejects more; the rest are applied to the answer afterwards
MAX_WAIT = 60.0  # longest pause between two attempts, whatever backoff or Retry-After say


@dataclass(frozen=True)
class Endpoint:
    """Where to ask: the full URL of the completions or chat route, and the model name."""

    url: str
    model: str
    chat: bool

    @property
    def protocol(self) -> str:
        return "chat" if self.chat else "completions"


def endpoint(url: str, model: str, chat: bool) -> Endpoint:
    """An endpoint from a base URL (http://host:8000/v1) and the --chat flag, or from a URL that
    already names its route (.../v1/chat/completions or .../v1/completions), which wins."""
    url = url.rstrip("/")
    if url.endswith(CHAT_PATH):
        return Endpoint(url, model, True)
    if url.endswith(COMPLETIONS_PATH):
        return Endpoint(url, model, False)
    return Endpoint(url + (CHAT_PATH if chat else COMPLETIONS_PATH), model, chat)


@dataclass(frozen=True)
class Policy:
    """How hard to try: parallel requests, seconds per request, retries, first backoff pause."""

    concurrency: int
    timeout: float
    retries: int
    backoff: float


@dataclass(frozen=True)
class Answer:
    text: str | None  # None when the request failed
    error: str | None
    attempts: int

    @property
    def ok(self) -> bool:
        return self.text is not None


class _Retryable(Exception):
    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _Fatal(Exception):
    """An answer that asking again will not change (400, 401, 404, ...)."""


class Client:
    def __init__(self, target: Endpoint, policy: Policy, decoding: Decoding, api_key: str | None = None):
        self.target = target
        self.policy = policy
        self.decoding = decoding
        self._api_key = api_key

    def body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.target.model,
            "max_tokens": self.decoding.max_new_tokens,
            "temperature": self.decoding.temperature,
            "top_p": self.decoding.top_p,
        }
        if self.target.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.decoding.stop:
            body["stop"] = list(self.decoding.stop[:MAX_STOP_STRINGS])
        return body

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _once(self, prompt: str) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.target.url, data=json.dumps(self.body(prompt)).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.policy.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = self._redact(exc.read(300).decode("utf-8", "replace").strip())
            message = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(message, _retry_after(exc.headers.get("Retry-After"))) from None
            raise _Fatal(message) from None
        except TimeoutError:
            raise _Retryable(f"timeout after {self.policy.timeout:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"timeout after {self.policy.timeout:g} s") from None
            raise _Retryable(f"connection error: {exc.reason}") from None
        except (HTTPException, ConnectionError, OSError) as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from None
        return self._text(raw)

    def _text(self, raw: bytes) -> str:
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice["message"]["content"] if self.target.chat else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed response: {raw[:80]!r}") from None
        if text is None and self.target.chat:  # a chat answer with no content (a refusal, a tool call)
            return ""
        if not isinstance(text, str):
            raise _Retryable(f"malformed response: {raw[:80]!r}")
        return text

    def ask(self, prompt: str) -> Answer:
        """The endpoint's completion of `prompt`, retried per the policy."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return Answer(self._once(prompt), None, attempt)
            except _Fatal as exc:
                return Answer(None, str(exc), attempt)
            except _Retryable as exc:
                if attempt > self.policy.retries:
                    return Answer(None, str(exc), attempt)
                pause = self.policy.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                time.sleep(min(MAX_WAIT, max(pause, exc.wait or 0.0)))


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def ask_all(client: Client, prompts: Iterable[tuple[int, str]], on_answer: Callable[[int, Answer], None]) -> None:
    """Ask every (index, prompt) with `policy.concurrency` requests in flight; `on_answer` runs in
    the calling thread, one answer at a time, in the order they arrive."""
    with ThreadPoolExecutor(max_workers=client.policy.concurrency) as pool:
        futures = {pool.submit(client.ask, prompt): index for index, prompt in prompts}
        try:
            for future in as_completed(futures):
                on_answer(futures[future], future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
