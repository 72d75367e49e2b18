"""`lora-recipes evaluate` against endpoints that misbehave, through the command line and real HTTP
servers on 127.0.0.1: the exit code when requests fail, URLs checked before anything runs, API keys
and URL credentials kept off disk and out of the terminal, redirects that must not carry the key to
another host, and Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lora_recipes.cli import app
from lora_recipes.evaluation.endpoints import Client, Policy, endpoint, public_url, redact, url_problem
from lora_recipes.evaluation.generation import Decoding

runner = CliRunner()
KEY = "sk-hardening-SECRET-7c2e91d04b"  # distinctive: grepped for in everything written
QUERY_KEY = "qk-in-the-url-5d8a3f"
PASSWORD = "pw-in-the-url-93be17"
KEY_ENV = "HARDENING_TEST_KEY"
DECODING = Decoding(max_new_tokens=8, temperature=0.0, top_p=1.0, stop=("\n",))
POLICY = Policy(concurrency=2, timeout=5.0, retries=1, backoff=0.01)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)


Behaviour = Callable[[Seen, int], Reply]  # (the request, the how-manieth for this prompt) -> reply


def completion(text: str, chat: bool = False) -> dict[str, Any]:
    choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {"choices": [{"index": 0, **choice}]}


def prompt_of(seen: Seen) -> str:
    body = seen.body or {}
    return str(body["messages"][0]["content"] if "messages" in body else body.get("prompt", ""))


class Server:
    """Records every request (GETs too) and answers it with `behaviour`."""

    def __init__(self, behaviour: Behaviour):
        self.behaviour = behaviour
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers.items()), json.loads(raw) if raw else None)
                with server.lock:
                    server.seen.append(seen)
                    attempt = sum(1 for s in server.seen if prompt_of(s) == prompt_of(seen))
                reply = server.behaviour(seen, attempt)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def answer_ok(seen: Seen, attempt: int) -> Reply:
    return Reply(200, completion(" positive"))


def write_task(folder: Path, n_test: int = 6) -> Path:
    data = folder / "data"
    data.mkdir(parents=True)
    for split, n in (("train", 8), ("validation", 4), ("test", n_test)):
        rows = [{"text": f"{split} review {i}", "label": ["negative", "positive"][i % 2]} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = folder / "sentiment.yaml"
    recipe.write_text(
        "version: 1\n"
        "name: sentiment\n"
        "base_model: ./no-model-here\n"
        "prompt: {template: 'Review: {text} Sentiment:'}\n"
        "output: {column: label, type: category, labels: [negative, positive]}\n"
        "data: {dataset: ./data}\n"
        "evaluation: {metric: accuracy, reference_task: glue_sst2}\n",
        encoding="utf-8",
    )
    return recipe


def evaluate_args(recipe: Path, url: str, out: Path, *extra: str, key: bool = True) -> list[str]:
    return [
        "evaluate",
        str(recipe),
        "--endpoint",
        url,
        "--model",
        "m",
        *(["--api-key-env", KEY_ENV] if key else []),
        "--output",
        str(out),
        "--set",
        "evaluation.endpoints.backoff=0.01",
        "--set",
        "evaluation.endpoints.retries=1",
        "--set",
        "evaluation.endpoints.timeout=5",
        *extra,
    ]


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


# --- 1. the exit code when requests fail -------------------------------------------------------


def test_every_request_refused_401_exits_1_and_names_the_key_variable(tmp_path: Path, key_env: str) -> None:
    recipe = write_task(tmp_path)

    def refuse(seen: Seen, attempt: int) -> Reply:
        return Reply(401, {"error": {"message": f"Incorrect API key provided: {seen.headers.get('Authorization')}"}})

    with Server(refuse) as server:
        result = runner.invoke(app, evaluate_args(recipe, f"{server.base}/v1", tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert "error: m: all 6 requests failed, so it has no score (HTTP 401 x6)" in result.stderr
    assert f"the API key in ${KEY_ENV} is wrong" in result.stderr and "--api-key-env" in result.stderr
    assert KEY not in result.output and "Bearer ***" in result.stderr
    assert len(server.seen) == 6  # a 401 is not retried
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["scores"] == {"m": {"accuracy": None}} and saved["failures"] == {"m": 6}
    table = (tmp_path / "out" / "table.md").read_text()
    assert f"| m: completions at {server.base}/v1/completions | - | 0 | 6 | - |" in table  # no score, not 0.000
    assert "- m: all 6 requests failed, so it has no score (HTTP 401 x6)." in table


def test_a_401_without_a_key_says_to_give_one(tmp_path: Path) -> None:
    recipe = write_task(tmp_path)
    with Server(lambda seen, attempt: Reply(401, {"error": "no key"})) as server:
        result = runner.invoke(app, evaluate_args(recipe, f"{server.base}/v1", tmp_path / "out", key=False))
    assert result.exit_code == 1, result.output
    assert "none was sent" in result.stderr and "--api-key-env VAR" in result.stderr


def test_nothing_listening_exits_1(tmp_path: Path) -> None:
    recipe = write_task(tmp_path)
    with Server(answer_ok) as server:
        url = f"{server.base}/v1"
    result = runner.invoke(app, evaluate_args(recipe, url, tmp_path / "out", key=False))
    assert result.exit_code == 1, result.output
    assert "all 6 requests failed" in result.stderr and "connection error" in result.stderr


def test_some_failed_requests_exit_0_with_the_count_printed_and_recorded(tmp_path: Path) -> None:
    recipe = write_task(tmp_path)

    def one_404(seen: Seen, attempt: int) -> Reply:
        return Reply(404, {}) if "review 2" in prompt_of(seen) else answer_ok(seen, attempt)

    with Server(one_404) as server:
        args = evaluate_args(recipe, f"{server.base}/v1", tmp_path / "out", "--format", "json", key=False)
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["failures"] == {"m": 1}
    assert "warning: m: 1 of 6 requests failed and score 0 (HTTP 404 x1)" in result.stderr
    assert f"--output {tmp_path / 'out'}" in result.stderr
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["failures"] == {"m": 1} and saved["systems"]["m"]["first_error"].startswith("HTTP 404")


# --- 2. URLs checked up front -------------------------------------------------------------------


def test_url_problems() -> None:
    assert url_problem("http://localhost:8000/v1") is None
    assert url_problem("https://api.openai.com/v1?api-version=1") is None
    assert url_problem("localhost:8000/v1") == "it does not start with http:// or https://"
    assert url_problem("api.openai.com/v1") == "it does not start with http:// or https://"
    assert url_problem("ftp://host/v1") == "it does not start with http:// or https://"
    assert url_problem("http:///v1") == "it names no host"
    assert url_problem("http://host:port/v1") is not None
    assert url_problem("http://host/v1 x") is not None
    assert url_problem("") is not None


def test_a_malformed_endpoint_url_is_a_user_error_before_any_model_loads(tmp_path: Path) -> None:
    recipe = write_task(tmp_path)
    cases = [
        ("localhost:8000/v1", "write --endpoint http://localhost:8000/v1"),
        ("http:///v1", "it names no host"),
        ("http://host:99999/v1", "cannot be read as a URL"),
        (f"api.example.com/v1?api_key={QUERY_KEY}", "does not start with http://"),
    ]
    for url, message in cases:
        # --base with a base model that does not exist: the URL is refused before it is looked for
        result = runner.invoke(app, ["evaluate", str(recipe), "--base", "--endpoint", url, "--model", "m"])
        assert result.exit_code == 2, (url, result.output)
        assert "--endpoint " in result.stderr and message in result.stderr, (url, result.stderr)
        assert "Traceback" not in result.output and QUERY_KEY not in result.output


# --- 3. secrets ----------------------------------------------------------------------------------


def test_public_url_and_redact() -> None:
    assert public_url(f"https://user:{PASSWORD}@h:8443/v1?api-version=2024-02-01&api_key={QUERY_KEY}#x") == (
        "https://***@h:8443/v1?api-version=2024-02-01&api_key=***"
    )
    assert public_url(f"http://h/v1?key={QUERY_KEY}&{QUERY_KEY}") == "http://h/v1?key=***&***"
    assert public_url("http://h:8000/v1/completions") == "http://h:8000/v1/completions"
    text = f'{{"authorization": "Bearer {KEY}", "url": "/v1?k=ab%2Fcd%2Bef%3D", "json": "ab\\/cd+ef="}}'
    assert redact(text, [KEY, "ab/cd+ef="]) == '{"authorization": "Bearer ***", "url": "/v1?k=***", "json": "***"}'


def test_a_non_json_answer_echoing_the_key_is_quoted_redacted(tmp_path: Path) -> None:
    def echo_headers(seen: Seen, attempt: int) -> Reply:
        # "padded": 290 characters before the header, so a cut at a fixed length would leave part of the key
        echoed = "x" * 290 * (prompt_of(seen) == "padded") + f"Authorization: {seen.headers['Authorization']}\n"
        return Reply(200, f"<html>{echoed}</html>".encode(), {"Content-Type": "text/html"})

    with Server(echo_headers) as server:
        client = Client(endpoint(f"{server.base}/v1", "m", chat=False), POLICY, DECODING, api_key=KEY)
        answers = [client.ask("plain"), client.ask("padded")]
    for answer in answers:
        assert not answer.ok and answer.error is not None
        assert answer.error.startswith("malformed response")
        assert KEY[:8] not in answer.error and KEY[-8:] not in answer.error
    assert "Authorization: Bearer ***" in str(answers[0].error)
    assert all(KEY in s.headers["Authorization"] for s in server.seen)  # it was sent, and echoed


def test_credentials_in_the_url_are_used_but_never_recorded(tmp_path: Path) -> None:
    recipe = write_task(tmp_path)
    with Server(answer_ok) as server:
        host = server.base.removeprefix("http://")
        url = f"http://bob:{PASSWORD}@{host}/v1?api-version=7&api_key={QUERY_KEY}"
        result = runner.invoke(app, evaluate_args(recipe, url, tmp_path / "out", key=False))
    assert result.exit_code == 0, result.output
    # the server got the full URL's credentials
    basic = base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    assert all(s.path == f"/v1/completions?api-version=7&api_key={QUERY_KEY}" for s in server.seen)
    assert all(s.headers["Authorization"] == f"Basic {basic}" for s in server.seen)
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    shown = f"http://***@{host}/v1/completions?api-version=7&api_key=***"
    assert saved["systems"]["m"]["endpoint"] == shown
    assert f"| m: completions at {shown} |" in (tmp_path / "out" / "table.md").read_text()
    assert_nothing_leaked(tmp_path / "out", result.output, [QUERY_KEY, PASSWORD, basic])


@pytest.fixture
def two_hosts() -> Any:
    """Server A redirects by prompt (`to-b-307`, `to-b-302`, `to-a-307`); server B (another
    port, so another host) and A's /elsewhere answer."""
    b = Server(lambda seen, attempt: Reply(200, completion(" from-b")))
    redirect: dict[str, tuple[int, str]] = {}

    def a_behaviour(seen: Seen, attempt: int) -> Reply:
        if seen.path.startswith("/elsewhere"):
            return Reply(200, completion(" from-a-elsewhere"))
        status, where = redirect.get(prompt_of(seen), (200, ""))
        if status == 200:
            return Reply(200, completion(" from-a"))
        return Reply(status, b"moved", {"Location": where})

    a = Server(a_behaviour)
    with a, b:
        redirect.update(
            {
                "to-b-307": (307, f"{b.base}/v1/completions"),
                "to-b-308": (308, f"{b.base}/v1/completions"),
                "to-b-302": (302, f"{b.base}/v1/completions?token={QUERY_KEY}"),
                "to-b-303": (303, f"{b.base}/v1/completions"),
                "to-a-307": (307, f"{a.base}/elsewhere/completions"),
            }
        )
        yield a, b


def test_redirects_never_carry_the_key_to_another_host(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    client = Client(endpoint(f"{a.base}/v1", "m", chat=False), POLICY, DECODING, api_key=KEY)

    # 307 and 308 to another host: asked again there with the same POST body, without the key
    for prompt in ("to-b-307", "to-b-308"):
        assert client.ask(prompt).text == " from-b"
    to_b = [s for s in b.seen if prompt_of(s).startswith("to-b-30")]
    assert [(s.method, prompt_of(s)) for s in to_b] == [("POST", "to-b-307"), ("POST", "to-b-308")]
    assert all("Authorization" not in s.headers for s in b.seen)

    # 307 to the same host: the key goes along
    assert client.ask("to-a-307").text == " from-a-elsewhere"
    assert [s.headers.get("Authorization") for s in a.seen if s.path.startswith("/elsewhere")] == [f"Bearer {KEY}"]

    # 302 and 303 would turn the POST into a GET: a failure that names where it points, nothing sent there
    for prompt in ("to-b-302", "to-b-303"):
        answer = client.ask(prompt)
        assert not answer.ok and answer.error is not None and answer.attempts == 1
        assert f"redirects to {b.base}/v1/completions" in answer.error and "--endpoint" in answer.error
    assert QUERY_KEY not in str(client.ask("to-b-302").error)  # the location is shown without credentials
    assert not [s for s in b.seen if s.method == "GET" or prompt_of(s) in ("to-b-302", "to-b-303", "")]


# --- everything together: nothing secret on disk or in the terminal -------------------------------


def assert_nothing_leaked(folder: Path, output: str, secrets: list[str]) -> None:
    pieces = [s[i : i + 10] for s in secrets for i in range(0, len(s) - 9)]  # no 10-character piece either
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert files
    for text, where in [(output, "stdout/stderr"), *((f.read_text(errors="replace"), str(f)) for f in files)]:
        for piece in pieces:
            assert piece not in text, (piece, where)


def test_secrets_never_reach_disk_or_the_terminal(tmp_path: Path, key_env: str) -> None:
    """A server that echoes the request headers every way it can: in non-JSON 200 bodies, in 500s,
    in 400s, in the completion itself; and that redirects to another host that does the same."""
    recipe = write_task(tmp_path, n_test=12)

    def headers_text(seen: Seen) -> str:
        return json.dumps({"path": seen.path, "headers": seen.headers})

    def misbehave(seen: Seen, attempt: int) -> Reply:
        row = int(prompt_of(seen).split("review ")[1].split()[0])
        echoed = headers_text(seen)
        kind = row % 6
        if kind == 0:
            return Reply(200, f"<html>proxy error {echoed}</html>".encode())
        if kind == 1:
            return Reply(500, echoed.encode())
        if kind == 2:
            return Reply(400, {"error": {"message": echoed}})
        if kind == 3:
            return Reply(200, completion(f" positive {echoed}"))
        if kind == 4:
            return Reply(307, echoed.encode(), {"Location": f"{other.base}/v1/completions?k={KEY}"})
        return Reply(302, b"", {"Location": f"{other.base}/v1/completions?key={KEY}"})

    other = Server(lambda seen, attempt: Reply(200, completion(f" negative {headers_text(seen)}")))
    with Server(misbehave) as server, other:
        host = server.base.removeprefix("http://")
        url = f"http://bob:{PASSWORD}@{host}/v1?key={QUERY_KEY}"
        out = tmp_path / "out"
        first = runner.invoke(app, evaluate_args(recipe, url, out))
        second = runner.invoke(app, evaluate_args(recipe, url, out, "--format", "json"))
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    basic = base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    assert_nothing_leaked(out, first.output + second.output, [KEY, QUERY_KEY, PASSWORD, basic])
    assert all(s.headers.get("Authorization") == f"Bearer {KEY}" for s in server.seen)
    assert not any("Authorization" in s.headers for s in other.seen)
    report = json.loads(second.stdout)
    assert report["systems"]["m"]["answered"] == 4  # rows 3, 9 (echo in the answer); rows 4, 10 (307 to the other host)
    rows = [json.loads(line) for line in (out / "predictions-m.jsonl").read_text().splitlines()]
    assert "Bearer ***" in rows[0]["error"] and "Bearer ***" in rows[3]["prediction"]


# --- 4. Ctrl-C -----------------------------------------------------------------------------------


def test_ctrl_c_keeps_the_answers_says_how_to_resume_and_exits_130(tmp_path: Path) -> None:
    recipe = write_task(tmp_path, n_test=8)
    out = tmp_path / "out"
    process: list[subprocess.Popen[str]] = []

    def interrupt_on_third(seen: Seen, attempt: int) -> Reply:
        if len(server.seen) == 3 and process:
            os.kill(process[0].pid, signal.SIGINT)
            time.sleep(0.3)  # the answer arrives while the command is stopping
        return answer_ok(seen, attempt)

    args = [*evaluate_args(recipe, "", out, "--set", "evaluation.endpoints.concurrency=1", key=False)]
    with Server(interrupt_on_third) as server:
        args[args.index("--endpoint") + 1] = f"{server.base}/v1"
        command = [sys.executable, "-m", "lora_recipes", *args]
        process.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        _, stderr = process[0].communicate(timeout=120)
        assert process[0].returncode == 130, stderr
        assert "interrupted; the answers so far are saved in" in stderr and f"--output {out}" in stderr
        assert "Traceback" not in stderr and "Aborted" not in stderr
        journal = [json.loads(line)["row"] for line in (out / "answers" / "m.jsonl").read_text().splitlines()]
        # Rows 0 and 1, and row 2, in flight when Ctrl-C came and answered while stopping (unless
        # Ctrl-C landed while an earlier answer was being written: then that one is asked again).
        assert 2 in journal and len(journal) >= 2 and len(set(journal)) == len(journal) and max(journal) == 2, journal
        asked_before = len(server.seen)
        process.clear()
        again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert asked_before == 3 and len(server.seen) - asked_before == 8 - len(journal)  # only what is missing
    assert json.loads((out / "eval.json").read_text())["systems"]["m"]["resumed"] == len(journal)
