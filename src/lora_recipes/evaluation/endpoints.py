"""A client for OpenAI-compatible endpoints (OpenAI, vLLM, LoRAX, llama.cpp's server): the
completions protocol or the chat protocol, asked from a few threads at once.

The standard library is enough (urllib and a thread pool), so asking an endpoint needs no extra
dependency. A request is retried with exponential backoff on 429s, 5xx answers, timeouts,
connection errors and answers that are not the JSON the protocol promises; a request that still
fails comes back as an `Answer` with its error, never as an exception, so one bad request cannot
end a run.

Credentials (the API key, a `user:password@` in the URL, credential-looking query values) never
leave the client in clear: every text it hands back, answer or error, passes through `redact`;
URLs meant to be shown or recorded go through `public_url`; and the Authorization header is never
sent to another host than the endpoint's (see `_SameHostAuthRedirects`).
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from http.client import HTTPException, HTTPMessage
from typing import IO, Any

from lora_recipes.evaluation.generation import Decoding

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
MAX_STOP_STRINGS = 4  # OpenAI rejects more; the rest are applied to the answer afterwards
MAX_WAIT = 60.0  # longest pause between two attempts, whatever backoff or Retry-After say
MAX_ERROR_BODY = 65536  # bytes of an error answer read (then redacted, then shortened)
EXCERPT = 300  # characters of an answer's body quoted in an error
SAFE_QUERY_NAME = re.compile(r"version", re.IGNORECASE)  # query values shown as they are (api-version)
REDACTED = "***"


# --- URLs and secrets -----------------------------------------------------------------------------


def url_problem(url: str) -> str | None:
    """What makes `url` unusable as an endpoint (a sentence), or None when it is an http(s) URL
    with a host."""
    if not url.strip():
        return "it is empty"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "it contains a space or a control character"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return f"it cannot be read as a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "it does not start with http:// or https://"
    if not parts.hostname:
        return "it names no host"
    return None


def public_url(url: str) -> str:
    """`url` as it may be shown or recorded: a `user:password@` becomes `***@`, every query value
    `***` (but api-version and the like), the fragment is dropped."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<an unreadable URL>"
    netloc, path = parts.netloc, parts.path
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    if not netloc and "@" in path:  # no scheme: user:pass@host/v1 is read as scheme user, path pass@host/v1
        path = f"{REDACTED}@{path.rsplit('@', 1)[1]}"
    query = "&".join(_public_query_item(item) for item in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, ""))


def _public_query_item(item: str) -> str:
    name, equals, value = item.partition("=")
    if not equals:
        return REDACTED if name else name  # a bare token can be a key itself
    return f"{name}={value if SAFE_QUERY_NAME.search(name) or not value else REDACTED}"


def url_secrets(url: str) -> list[str]:
    """What `public_url` hides: userinfo and its password, query values (raw and decoded)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found += [userinfo, urllib.parse.unquote(userinfo)]
        if parts.password:
            found += [parts.password, urllib.parse.unquote(parts.password)]
    for item in parts.query.split("&") if parts.query else ():
        name, equals, value = item.partition("=")
        if not equals:
            value = name
        elif SAFE_QUERY_NAME.search(name):
            continue
        found += [value, urllib.parse.unquote_plus(value)]
    return [s for s in found if len(s) >= 4]  # shorter values are no credentials, and would mangle text


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (as is, URL-quoted or JSON-escaped, with or without `\\/`)
    replaced by ***: so `Bearer <key>` becomes `Bearer ***`."""
    variants = {
        v
        for s in secrets
        if s
        for escaped in [json.dumps(s)[1:-1]]
        for v in (s, urllib.parse.quote(s, safe=""), escaped, escaped.replace("/", "\\/"))
    }
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, REDACTED)
    return text


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


# --- the endpoint ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where to ask: the full URL of the completions or chat route, and the model name."""

    url: str
    model: str
    chat: bool

    @property
    def protocol(self) -> str:
        return "chat" if self.chat else "completions"

    @property
    def public_url(self) -> str:
        """The URL without credentials, for tables, eval.json and messages."""
        return public_url(self.url)


def endpoint(url: str, model: str, chat: bool) -> Endpoint:
    """An endpoint from a base URL (http://host:8000/v1) and the --chat flag, or from a URL that
    already names its route (.../v1/chat/completions or .../v1/completions), which wins. A query
    string (?api-version=...) stays at the end."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith(CHAT_PATH):
        chat = True
    elif path.endswith(COMPLETIONS_PATH):
        chat = False
    else:
        path += CHAT_PATH if chat else COMPLETIONS_PATH
    return Endpoint(urllib.parse.urlunsplit(parts._replace(path=path)), model, chat)


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


class _SameHostAuthRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects of a POST: a 307 or 308 is asked again with the same body, and with the
    Authorization header only when the new URL has the same scheme, host and port; a 301, 302 or
    303 (which would turn the POST into a GET and lose its body) is a failure that names where it
    points."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: HTTPMessage, newurl: str
    ) -> urllib.request.Request | None:
        if req.get_method() != "POST":
            return super().redirect_request(req, fp, code, msg, headers, newurl)
        where = public_url(newurl)
        if code not in (307, 308):
            fp.close()
            raise _Fatal(
                f"HTTP {code}: the endpoint redirects to {where}, and following it would turn the POST into a GET; "
                "give that URL as --endpoint"
            )
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            fp.close()
            raise _Fatal(f"HTTP {code}: the endpoint redirects to {where}, which is not an http(s) URL")
        same_host = _origin(newurl) == _origin(req.full_url)
        kept = {k: v for k, v in req.headers.items() if same_host or k.lower() != "authorization"}
        return urllib.request.Request(
            newurl, data=req.data, headers=kept, origin_req_host=req.origin_req_host, unverifiable=True, method="POST"
        )


_OPENER = urllib.request.build_opener(_SameHostAuthRedirects)


class Client:
    def __init__(
        self,
        target: Endpoint,
        policy: Policy,
        decoding: Decoding,
        api_key: str | None = None,
        api_key_env: str | None = None,
    ):
        """`api_key_env` names where the key came from, for the message of a refused key."""
        self.target = target
        self.policy = policy
        self.decoding = decoding
        self._api_key_env = api_key_env
        self._stop = threading.Event()
        parts = urllib.parse.urlsplit(target.url)
        self._url = target.url
        self._authorization: str | None = None
        self._secrets = url_secrets(target.url)
        if "@" in parts.netloc:  # user:password@host: sent as Basic authentication, as curl does
            self._url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
            user = urllib.parse.unquote(parts.username or "")
            token = base64.b64encode(f"{user}:{urllib.parse.unquote(parts.password or '')}".encode()).decode()
            self._authorization = f"Basic {token}"
            self._secrets.append(token)
        if api_key:
            self._authorization = f"Bearer {api_key}"
            self._secrets.append(api_key)

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

    def redact(self, text: str) -> str:
        """`text` without this client's credentials."""
        return redact(text, self._secrets)

    def _excerpt(self, raw: bytes, whole: bool = True) -> str:
        """The start of an answer's body for an error message, redacted before it is shortened
        (so no part of a key survives the cut). A body not read `whole` loses its last bytes,
        where a key could have been cut in two."""
        text = raw.decode("utf-8", "replace")
        if not whole:
            text = text[: max(0, len(text) - max((len(s) for s in self._secrets), default=0))]
        text = " ".join(self.redact(text).split())
        return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."

    def _refused(self, code: int, detail: str) -> str:
        said = f" (the endpoint said: {detail})" if detail else ""
        if self._api_key_env:
            return (
                f"HTTP {code}: the API key in ${self._api_key_env} is wrong, expired or not allowed to use "
                f"{self.target.public_url}; fix the key or name the right variable with --api-key-env{said}"
            )
        return (
            f"HTTP {code}: the endpoint wants an API key and none was sent; name the environment variable "
            f"that holds it with --api-key-env VAR{said}"
        )

    def _once(self, prompt: str) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        try:
            request = urllib.request.Request(
                self._url, data=json.dumps(self.body(prompt)).encode(), headers=headers, method="POST"
            )
            with _OPENER.open(request, timeout=self.policy.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read(MAX_ERROR_BODY)
            detail = self._excerpt(body, whole=len(body) < MAX_ERROR_BODY)
            if exc.code in (401, 403):
                raise _Fatal(self._refused(exc.code, detail)) from None
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
        except ValueError as exc:  # a URL urllib cannot use (checked up front by url_problem)
            raise _Fatal(f"bad endpoint URL {self.target.public_url}: {exc}") from None
        return self._text(raw)

    def _text(self, raw: bytes) -> str:
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice["message"]["content"] if self.target.chat else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed response (not {self.target.protocol} JSON): {self._excerpt(raw)}") from None
        if text is None and self.target.chat:  # a chat answer with no content (a refusal, a tool call)
            return ""
        if not isinstance(text, str):
            raise _Retryable(f"malformed response (not {self.target.protocol} JSON): {self._excerpt(raw)}")
        return text

    def cancel(self) -> None:
        """Ask no more: requests not yet sent, and retries, end at once as failures."""
        self._stop.set()

    def ask(self, prompt: str) -> Answer:
        """The endpoint's completion of `prompt`, retried per the policy. Whatever comes back,
        text or error, is redacted."""
        attempt = 0
        while True:
            if self._stop.is_set():
                return Answer(None, "cancelled", attempt)
            attempt += 1
            try:
                return Answer(self.redact(self._once(prompt)), None, attempt)
            except _Fatal as exc:
                return Answer(None, self.redact(str(exc)), attempt)
            except _Retryable as exc:
                if attempt > self.policy.retries:
                    return Answer(None, self.redact(str(exc)), attempt)
                pause = self.policy.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                self._stop.wait(min(MAX_WAIT, max(pause, exc.wait or 0.0)))


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def ask_all(client: Client, prompts: Iterable[tuple[int, str]], on_answer: Callable[[int, Answer], None]) -> None:
    """Ask every (index, prompt) with `policy.concurrency` requests in flight; `on_answer` runs in
    the calling thread, one answer at a time, in the order they arrive. On Ctrl-C nothing more is
    sent, the requests in flight finish (one timeout at most), and their answers are handed to
    `on_answer` before the KeyboardInterrupt goes on."""
    with ThreadPoolExecutor(max_workers=client.policy.concurrency) as pool:
        futures = {pool.submit(client.ask, prompt): index for index, prompt in prompts}
        unseen: set[Future[Answer]] = set(futures)
        try:
            for future in as_completed(futures):
                unseen.discard(future)  # before on_answer: a Ctrl-C inside it must not hand it over twice
                on_answer(futures[future], future.result())
        except KeyboardInterrupt:
            client.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            _hand_over(futures, unseen, on_answer)
            raise
        except BaseException:
            client.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _hand_over(
    futures: Mapping[Future[Answer], int], unseen: set[Future[Answer]], on_answer: Callable[[int, Answer], None]
) -> None:
    for future in sorted(unseen, key=futures.__getitem__):
        if future.done() and not future.cancelled() and future.exception() is None and future.result().ok:
            on_answer(futures[future], future.result())
