"""The endpoint client against a real HTTP server on 127.0.0.1 that speaks the OpenAI completions
and chat protocols and answers from a script: 500s, 429s, timeouts and malformed JSON must be
retried, a request that keeps failing is counted (never raised), and a resumed run asks only what
is missing."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lora_recipes.data.types import EvaluationSet, Example
from lora_recipes.errors import UserError
from lora_recipes.evaluation.endpoints import Answer, Client, Policy, ask_all, endpoint
from lora_recipes.evaluation.evaluate import System, evaluate, plan_systems
from lora_recipes.evaluation.generation import Decoding
from lora_recipes.recipe.loader import LoadedRecipe, load_recipe

SECRET = "sk-test-DO-NOT-LEAK-4f1c9a"
# Generous, so that a busy machine never makes an ordinary answer look like a timeout.
TIMEOUT = 1.0


class ScriptedServer:
    """Answers prompt P according to SCRIPT[P]: one step per attempt (the last step repeats).
    A step is "ok" (answer ANSWERS[P]), an HTTP status, "timeout" (answer too late), "garbage"
    (not JSON) or "empty" (JSON without choices)."""

    def __init__(self, script: dict[str, list[str]], answers: dict[str, str]):
        self.script = script
        self.answers = answers
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[str | None] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][0]["content"] if chat else body["prompt"]
                with server.lock:
                    server.requests[prompt] += 1
                    attempt = server.requests[prompt]
                    server.bodies.append(body)
                    server.headers.append(self.headers.get("Authorization"))
                steps = server.script.get(prompt, ["ok"])
                step = steps[min(attempt, len(steps)) - 1]
                if step == "timeout":
                    time.sleep(TIMEOUT * 2.5)
                    step = "ok"
                if step.isdigit():
                    self._send(int(step), {"error": {"message": f"scripted {step}"}}, retry_after="0")
                elif step == "garbage":
                    self._send_raw(200, b"<html>upstream hiccup</html>")
                elif step == "empty":
                    self._send(200, {"choices": []})
                else:
                    text = server.answers.get(prompt, "positive")
                    choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                    self._send(200, {"object": "text_completion", "choices": [{"index": 0, **choice}]})

            def _send(self, status: int, payload: dict[str, Any], retry_after: str | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode(), retry_after)

            def _send_raw(self, status: int, data: bytes, retry_after: str | None = None) -> None:
                try:
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout step)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


POLICY = Policy(concurrency=4, timeout=TIMEOUT, retries=3, backoff=0.01)
DECODING = Decoding(max_new_tokens=8, temperature=0.0, top_p=1.0, stop=("\n",))


def test_endpoint_urls() -> None:
    assert endpoint("http://h:8000/v1/", "m", chat=False).url == "http://h:8000/v1/completions"
    assert endpoint("http://h:8000/v1", "m", chat=True).url == "http://h:8000/v1/chat/completions"
    assert endpoint("https://api.openai.com/v1/chat/completions", "gpt-4", chat=False).chat
    assert not endpoint("http://h/v1/completions", "m", chat=True).chat
    # a query string (Azure's api-version) stays at the end
    azure = endpoint("https://x.azure.com/openai/v1/?api-version=2024-06-01", "gpt", chat=True)
    assert azure.url == "https://x.azure.com/openai/v1/chat/completions?api-version=2024-06-01"
    assert endpoint("http://h/v1/chat/completions?api-version=1", "m", chat=False).chat


def test_every_kind_of_transient_failure_is_retried() -> None:
    script = {
        "p500": ["500", "ok"],
        "p429": ["429", "503", "ok"],
        "ptimeout": ["timeout", "ok"],
        "pgarbage": ["garbage", "empty", "ok"],
    }
    with ScriptedServer(script, {}) as server:
        client = Client(endpoint(server.url, "m", chat=False), POLICY, DECODING)
        answers: dict[int, Answer] = {}
        ask_all(client, list(enumerate([*script, "plain"])), lambda i, a: answers.__setitem__(i, a))
    assert all(a.ok and a.text == "positive" for a in answers.values())
    assert [answers[i].attempts for i in range(5)] == [2, 3, 2, 3, 1]
    assert server.requests == Counter({"p500": 2, "p429": 3, "ptimeout": 2, "pgarbage": 3, "plain": 1})
    sent = server.bodies[0]
    assert sent["model"] == "m" and sent["max_tokens"] == 8 and sent["temperature"] == 0.0 and sent["stop"] == ["\n"]


def test_a_request_that_keeps_failing_comes_back_as_a_failure() -> None:
    with ScriptedServer({"bad": ["500"], "gone": ["404"]}, {}) as server:
        client = Client(endpoint(server.url, "m", chat=False), POLICY, DECODING)
        bad, gone = client.ask("bad"), client.ask("gone")
    assert not bad.ok and bad.error is not None and bad.error.startswith("HTTP 500")
    assert bad.attempts == POLICY.retries + 1
    assert not gone.ok and gone.attempts == 1  # a 404 is not retried
    assert server.requests == Counter({"bad": 4, "gone": 1})


def test_chat_protocol_sends_messages_and_reads_the_message_content() -> None:
    with ScriptedServer({}, {"hello": "positive"}) as server:
        client = Client(endpoint(server.url, "gpt-x", chat=True), POLICY, DECODING, api_key=SECRET)
        answer = client.ask("hello")
    assert answer.text == "positive"
    assert server.bodies[0]["messages"] == [{"role": "user", "content": "hello"}]
    assert server.headers[0] == f"Bearer {SECRET}"


def test_nothing_listening_is_a_counted_connection_failure() -> None:
    with ScriptedServer({}, {}) as server:
        url = server.url
    client = Client(endpoint(url, "m", chat=False), Policy(1, TIMEOUT, 1, 0.01), DECODING)
    answer = client.ask("anyone?")
    assert not answer.ok and answer.error is not None and answer.error.startswith("connection error")
    assert answer.attempts == 2


# --- through `evaluate`: counts, outputs, resume, the key -----------------------------------------


def sentiment_recipe(tmp_path: Path, *overrides: str) -> LoadedRecipe:
    path = tmp_path / "sentiment.yaml"
    path.write_text(
        "version: 1\n"
        "base_model: ./no-model-needed\n"
        "prompt: {template: 'Review: {text}\\nSentiment:'}\n"
        "output: {column: label, type: category, labels: [negative, positive]}\n"
        "data: {dataset: ./rows.jsonl}\n"
        "evaluation: {metric: accuracy, reference_task: glue_sst2}\n",
        encoding="utf-8",
    )
    defaults = [
        f"evaluation.endpoints.timeout={TIMEOUT}",
        "evaluation.endpoints.retries=2",
        "evaluation.endpoints.backoff=0.01",
    ]
    return load_recipe(path, [*defaults, *overrides])


def subset(n: int) -> EvaluationSet:
    examples = [
        Example(i, f"Review: review number {i}\nSentiment:", "positive" if i % 2 else "negative") for i in range(n)
    ]
    return EvaluationSet("test", examples, f"hash-of-{n}", ("negative", "positive"))


def test_evaluate_counts_failures_and_resumes_without_asking_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = subset(10)
    prompts = [e.prompt for e in data.examples]
    # Every answer is right except: row 3 answers the wrong label, row 4 answers nonsense
    # (unparseable), row 5 fails on every attempt of the first run (3 attempts) and succeeds after.
    answers = {p: " " + e.target for p, e in zip(prompts, data.examples, strict=True)}
    answers[prompts[3]] = " positive" if data.examples[3].target == "negative" else " negative"
    answers[prompts[4]] = " I cannot tell"
    script = {
        prompts[0]: ["500", "ok"],
        prompts[1]: ["timeout", "ok"],
        prompts[2]: ["garbage", "ok"],
        prompts[5]: ["503", "503", "503", "ok"],
    }
    monkeypatch.setenv("TEST_ENDPOINT_KEY", SECRET)
    loaded = sentiment_recipe(tmp_path)
    out = tmp_path / "eval"
    with ScriptedServer(script, answers) as server:
        systems = plan_systems(
            adapter=None,
            base=False,
            endpoints=[(server.url, "scripted")],
            chat=False,
            api_key_envs=["TEST_ENDPOINT_KEY"],
            base_model=loaded.recipe.base_model,
        )
        first = evaluate(loaded, data, systems, out)
        asked_first = Counter(server.requests)
        second = evaluate(loaded, data, systems, out)
        asked_second = server.requests - asked_first

    s1 = first["systems"]["scripted"]
    assert first["n"] == 10 and first["failures"] == {"scripted": 1} and first["unparseable"] == {"scripted": 1}
    assert s1["answered"] == 9 and s1["errors"] == {"HTTP 503": 1}
    assert s1["retries"] == 1 + 1 + 1 + 2  # rows 0, 1, 2 once each; row 5 twice before giving up
    assert first["scores"]["scripted"]["accuracy"] == pytest.approx(7 / 10)  # rows 3, 4, 5 score 0
    assert asked_first[prompts[5]] == 3

    # The second run asked only for row 5, once, and it succeeded.
    assert asked_second == Counter({prompts[5]: 1})
    s2 = second["systems"]["scripted"]
    assert second["failures"] == {"scripted": 0} and s2["resumed"] == 9 and s2["answered"] == 10
    assert second["scores"]["scripted"]["accuracy"] == pytest.approx(8 / 10)

    rows = [json.loads(line) for line in (out / "predictions-scripted.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(10))
    assert rows[3]["score"] == 0 and rows[3]["parsed"] and rows[4]["parsed"] is False
    assert rows[0] == {
        "row": 0,
        "prompt": prompts[0],
        "gold": "negative",
        "prediction": "negative",
        "score": 1.0,
        "parsed": True,
    }

    saved = json.loads((out / "eval.json").read_text())
    assert saved["scores"]["scripted"]["accuracy"] == pytest.approx(0.8)
    assert saved["systems"]["scripted"]["api_key_env"] == "TEST_ENDPOINT_KEY"
    table = (out / "table.md").read_text()
    assert "| scripted: completions at" in table and "| 0.800 |" in table
    assert "LoRA Land: GPT-4 | 0.942" in table

    assert all(h == f"Bearer {SECRET}" for h in server.headers)
    for file in out.rglob("*"):
        if file.is_file():
            assert SECRET not in file.read_text(encoding="utf-8"), file


def test_the_failed_requests_are_shown_in_the_table(tmp_path: Path) -> None:
    data = subset(4)
    script = {data.examples[1].prompt: ["500"], data.examples[2].prompt: ["timeout"]}
    loaded = sentiment_recipe(tmp_path, "evaluation.endpoints.retries=1")
    with ScriptedServer(script, {e.prompt: e.target for e in data.examples}) as server:
        systems = plan_systems(
            adapter=None, base=False, endpoints=[(server.url, "flaky")], chat=True, api_key_envs=[], base_model="x"
        )
        result = evaluate(loaded, data, systems, tmp_path / "out")
    assert result["systems"]["flaky"]["errors"] == {"HTTP 500": 1, "timeout": 1}
    assert result["scores"]["flaky"]["accuracy"] == 0.5
    assert (
        "flaky: 2 of 4 requests failed and score 0 (HTTP 500 x1, timeout x1)"
        in (tmp_path / "out" / "table.md").read_text()
    )


def test_a_missing_api_key_is_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    endpoints = [("http://127.0.0.1:9/v1", "m")]
    with pytest.raises(UserError, match="--api-key-env NO_SUCH_KEY_VAR: the environment variable is not set"):
        plan_systems(
            adapter=None, base=False, endpoints=endpoints, chat=False, api_key_envs=["NO_SUCH_KEY_VAR"], base_model="x"
        )
    system = System("m", "endpoint", "m", endpoint=endpoint(*endpoints[0], chat=False), api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(UserError, match="NO_SUCH_KEY_VAR"):
        evaluate(sentiment_recipe(tmp_path), subset(2), [system], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_api_keys_pair_with_endpoints_by_position(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "k")
    endpoints = [("http://a/v1", "lorax"), ("https://b/v1", "gpt-4")]
    systems = plan_systems(
        adapter=None, base=False, endpoints=endpoints, chat=False, api_key_envs=["-", "KEY"], base_model="x"
    )
    assert [s.api_key_env for s in systems] == [None, "KEY"]
    with pytest.raises(UserError, match="once per --endpoint"):
        plan_systems(adapter=None, base=False, endpoints=endpoints, chat=False, api_key_envs=["KEY"], base_model="x")
    same = plan_systems(
        adapter=None,
        base=False,
        endpoints=[("http://a", "m"), ("http://b", "m")],
        chat=False,
        api_key_envs=[],
        base_model="x",
    )
    assert [s.name for s in same] == ["m", "m-2"]
    clash = plan_systems(
        adapter=None,
        base=False,
        endpoints=[("http://a", "org/m"), ("http://b", "org-m")],
        chat=False,
        api_key_envs=[],
        base_model="x",
    )
    assert [s.slug for s in clash] == ["org-m", "org-m-2"]  # distinct prediction files


@pytest.fixture
def many_prompts() -> Iterator[list[str]]:
    yield [f"prompt {i}" for i in range(40)]


def test_concurrency_is_bounded(many_prompts: list[str]) -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    class Counting(Client):
        def _once(self, prompt: str) -> str:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.05)
            with lock:
                in_flight -= 1
            return prompt.upper()

    client = Counting(endpoint("http://unused/v1", "m", chat=False), Policy(3, 1.0, 0, 0.0), DECODING)
    got: dict[int, str | None] = {}
    ask_all(client, list(enumerate(many_prompts)), lambda i, a: got.__setitem__(i, a.text))
    assert peak == 3
    assert got == {i: p.upper() for i, p in enumerate(many_prompts)}
