"""An OpenAI-compatible server on 127.0.0.1 that misbehaves on purpose, for trying
`lora-recipes evaluate --endpoint` against the failures real endpoints have.

It replays the answers of an earlier evaluation (a predictions-<system>.jsonl file: prompt ->
prediction), so a run against it must reproduce that system's score exactly, and fails every Nth
request in turn with a 500, a 429, a timeout (it answers only after --slow seconds) and a body that
is not JSON. It speaks the completions protocol (/v1/completions) and the chat protocol
(/v1/chat/completions).

    python scripts/flaky_endpoint.py --answers evals/x/predictions-adapter.jsonl --fail-every 5 --port 8765
    lora-recipes evaluate RECIPE --endpoint http://127.0.0.1:8765/v1 --model replay \\
        --set evaluation.endpoints.timeout=2 --set evaluation.endpoints.backoff=0.1

Stop it with Ctrl-C; it prints how many requests it answered and failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAILURES = ("500", "429", "timeout", "malformed")


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=Path, required=True, help="predictions-<system>.jsonl to replay")
    parser.add_argument("--fail-every", type=int, default=5, help="fail every Nth request (0: never)")
    parser.add_argument("--slow", type=float, default=3.0, help="seconds a 'timeout' request waits")
    parser.add_argument("--prefix", default=" ", help="text put before each answer (the recipe's target prefix)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    answers = {}
    for line in args.answers.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        answers[row["prompt"]] = row["prediction"] or ""
    counter = itertools.count(1)
    lock = threading.Lock()
    seen: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            chat = self.path.endswith("/chat/completions")
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            with lock:
                n = next(counter)
            failing = args.fail_every and n % args.fail_every == 0
            kind = FAILURES[(n // args.fail_every - 1) % len(FAILURES)] if failing else "answered"
            with lock:
                seen[kind] += 1
            if kind == "timeout":
                time.sleep(args.slow)
            if kind in ("500", "429"):
                self._send(int(kind), json.dumps({"error": {"message": f"flaky {kind}"}}).encode())
            elif kind == "malformed":
                self._send(200, b'{"choices": [{"text": ')
            else:
                text = args.prefix + answers.get(prompt, "")
                choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                self._send(200, json.dumps({"choices": [{"index": 0, "finish_reason": "stop", **choice}]}).encode())

        def _send(self, status: int, data: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped waiting

    # Stop on SIGTERM too, and on SIGINT even when started in the background (where it is ignored).
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"serving {len(answers)} answers at http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("requests: " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())), flush=True)


if __name__ == "__main__":
    main()
