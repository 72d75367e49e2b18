"""The unit of work of a fleet, the same on every backend: one recipe's `train`, then its
`evaluate`, each in a child process, so that a crash or an out-of-memory kills only that job.

`run_job` decides from the run directory alone (runstate.py) what is left to do, so running it
again is always safe: a finished run is skipped, a part-trained one is resumed from its newest
checkpoint (`train --resume`), a trained one is only evaluated (`evaluate` resumes its own
answers from the same --output). A run directory whose lock a live `train` holds is "busy"
(running elsewhere): not a failure, and nothing is started beside it.

Every child's output is appended to the run's fleet.log, under a header line per child.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.atomic import write_json_atomic
from lora_recipes.fleet import runstate
from lora_recipes.fleet.child import PARENT_ENV
from lora_recipes.training.run_dir import LockInfo, RunLayout, lock_holder

FINISHED, FAILED, INTERRUPTED, BUSY = "finished", "failed", "interrupted", "busy"
BUSY_MESSAGE = "in use by another `train`"  # train's refusal of a run directory whose lock is held
STOPPED_CODES = (130, -signal.SIGINT, -signal.SIGTERM)


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs, as plain values (it travels to Ray workers)."""

    name: str
    recipe: str  # absolute path of the recipe file
    runs: str  # absolute path of the fleet folder; the run directory is runs/name
    overrides: tuple[str, ...] = ()  # --set
    data: str | None = None  # --data (absolute)
    base: bool = False  # also score the base model
    attempt: int = 1
    env: tuple[tuple[str, str], ...] = ()  # set in the children's environment
    cwd: str | None = None  # the driver's working directory (relative --set paths)
    grace_seconds: float = 600.0  # how long a child asked to stop may take to write its checkpoint
    token: str = ""  # this submission's mark in the job file, so the driver never reads an older one
    busy_wait_seconds: float = 60.0  # how long to wait for another `train` to let go of the run directory

    @property
    def run_dir(self) -> Path:
        return Path(self.runs) / self.name


@dataclass(frozen=True)
class JobResult:
    name: str
    outcome: str  # finished, failed, interrupted or busy
    started: bool  # a child ran (the attempt counts)
    error: str | None = None
    retry: bool = False  # worth another attempt: not a mistake that would fail the same way again
    exit_code: int | None = None
    host: str = ""
    trained: str = ""  # started, resumed, or "" (nothing trained this time)
    train_seconds: float = 0.0
    evaluate_seconds: float = 0.0


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class _Marker:
    """DIR/.fleet/<name>.json: the job's phase, for the driver's status lines."""

    def __init__(self, spec: JobSpec) -> None:
        self.path = runstate.job_file(Path(spec.runs), spec.name)
        self.base = {"attempt": spec.attempt, "token": spec.token, "host": socket.gethostname(), "pid": os.getpid()}

    def write(self, phase: str, **extra: Any) -> None:
        write_json_atomic(self.path, {**self.base, "phase": phase, "since": _now(), "clock": time.time(), **extra})


def _log_path(spec: JobSpec) -> Path:
    """The run's fleet.log once the run directory exists; until then (a first `train` refuses a
    folder that is not empty) DIR/.fleet/<name>.log, moved into the run directory afterwards."""
    if RunLayout(spec.run_dir).resolved_recipe.is_file():
        return spec.run_dir / runstate.FLEET_LOG
    return runstate.pending_log(Path(spec.runs), spec.name)


def _adopt_pending_log(spec: JobSpec) -> None:
    pending = runstate.pending_log(Path(spec.runs), spec.name)
    if not pending.is_file() or not RunLayout(spec.run_dir).resolved_recipe.is_file():
        return
    with (spec.run_dir / runstate.FLEET_LOG).open("ab") as log:
        log.write(pending.read_bytes())
    pending.unlink()


def _ask_to_stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C's signal: `train` writes a checkpoint and exits 130, `evaluate` keeps its answers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)


def _wait(proc: subprocess.Popen[bytes], stop: threading.Event | None, grace: float) -> int:
    """The child's exit code. When `stop` is set, or this thread is interrupted (Ray cancels a
    task with KeyboardInterrupt), the child is asked to stop and given `grace` seconds."""
    asked: float | None = None
    try:
        while True:
            try:
                return proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
            if asked is None and stop is not None and stop.is_set():
                _ask_to_stop(proc)
                asked = time.monotonic()
            elif asked is not None and time.monotonic() - asked > grace:
                proc.kill()
    except BaseException:
        _ask_to_stop(proc)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _command_text(args: list[str]) -> str:
    return "lora-recipes " + " ".join(args)


def run_child(args: list[str], log_path: Path, spec: JobSpec, stop: threading.Event | None) -> tuple[int, str, float]:
    """Run `python -m lora_recipes ARGS` (through child.py) with its output appended to
    `log_path`; returns the exit code (negative: killed by that signal), what it wrote, and its
    wall time."""
    env = {**os.environ, **dict(spec.env), "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
    cwd = spec.cwd if spec.cwd and Path(spec.cwd).is_dir() else None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("ab") as log:
        log.seek(0, os.SEEK_END)
        offset = log.tell()
        header = f"=== {_now()} attempt {spec.attempt} on {socket.gethostname()}: {_command_text(args)}\n"
        log.write(header.encode("utf-8"))
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "lora_recipes.fleet.child", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # the driver decides when its jobs stop, not the terminal
        )
        code = _wait(proc, stop, spec.grace_seconds)
        seconds = time.monotonic() - started
        log.write(f"=== exit code {code} after {seconds:.1f} s\n".encode())
    with log_path.open("rb") as f:
        f.seek(offset)
        output = f.read().decode("utf-8", errors="replace")
    return code, output, seconds


def failure_reason(code: int, output: str) -> str:
    """One line: the child's last `error:` line, else its last line, with how it ended."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("=== ")]
    errors = [line for line in lines if line.startswith("error:")]
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
        return how + (f" ({lines[-1][:300]})" if lines else "")
    text = errors[-1].removeprefix("error:").strip() if errors else (lines[-1] if lines else "no output")
    return f"exit code {code}: {text[:500]}"


def train_args(spec: JobSpec, phase: str) -> list[str]:
    if phase == runstate.PART_TRAINED:
        return ["train", "--resume", str(spec.run_dir)]
    args = ["train", spec.recipe, "--run-dir", str(spec.run_dir)]
    if spec.data is not None:
        args += ["--data", spec.data]
    for item in spec.overrides:
        args += ["--set", item]
    return args


def evaluate_args(spec: JobSpec) -> list[str]:
    run = RunLayout(spec.run_dir)
    args = ["evaluate", str(run.resolved_recipe), "--adapter", str(spec.run_dir)]
    args += ["--output", str(runstate.eval_dir(spec.run_dir))]
    return [*args, "--base"] if spec.base else args


def _leftovers(run_dir: Path) -> list[str]:
    """What a folder without recipe.resolved.yaml holds other than what `train` leaves when it is
    killed while starting (its lock, hidden staging folders)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))


def run_job(spec: JobSpec, stop: threading.Event | None = None) -> JobResult:
    """Train (or resume) and evaluate one recipe; see the module notes."""
    host = socket.gethostname()
    run_dir = spec.run_dir
    now = runstate.phase(run_dir, base=spec.base)
    if now == runstate.DONE:
        return JobResult(spec.name, FINISHED, started=False, host=host)
    if _set(stop):
        return JobResult(spec.name, INTERRUPTED, started=False, host=host)
    marker = _Marker(spec)
    holder = _lock_released(spec, stop) if now != runstate.TRAINED else None
    if holder is not None:
        marker.write(BUSY, holder=str(holder))
        return JobResult(spec.name, BUSY, started=False, error=f"running elsewhere ({holder})", host=host)
    try:
        return _train_and_evaluate(spec, stop, marker, now, host)
    except BaseException:  # cancelled (Ray's KeyboardInterrupt): the child has stopped; say so
        marker.write(INTERRUPTED)
        raise


def _lock_released(spec: JobSpec, stop: threading.Event | None) -> LockInfo | None:
    """Who still holds the run directory after up to `busy_wait_seconds` (None: nobody). A task
    that Ray re-runs after its worker died finds the old `train` still writing its checkpoint."""
    deadline = time.monotonic() + spec.busy_wait_seconds
    holder = lock_holder(spec.run_dir) if spec.run_dir.is_dir() else None
    while holder is not None and time.monotonic() < deadline and not _set(stop):
        time.sleep(0.5)
        holder = lock_holder(spec.run_dir)
    return holder


def _train_and_evaluate(spec: JobSpec, stop: threading.Event | None, marker: _Marker, now: str, host: str) -> JobResult:
    run_dir = spec.run_dir
    _adopt_pending_log(spec)  # an earlier attempt's, whose worker died before it could move it
    trained, train_seconds = "", 0.0
    if now in (runstate.NEW, runstate.PART_TRAINED):
        leftovers = _leftovers(run_dir) if now == runstate.NEW else []
        if leftovers:
            error = f"{run_dir} holds files that are not a run ({', '.join(leftovers[:5])}); move them or use another --runs"
            marker.write(FAILED, error=error)
            return JobResult(spec.name, FAILED, started=False, error=error, host=host)
        args = train_args(spec, now)
        if now == runstate.NEW and run_dir.is_dir() and any(run_dir.iterdir()):
            args.append("--overwrite")  # only a dead `train`'s lock or staging folders are there
        trained = "resumed" if now == runstate.PART_TRAINED else "started"
        marker.write("training", log=str(_log_path(spec)))
        code, output, train_seconds = run_child(args, _log_path(spec), spec, stop)
        _adopt_pending_log(spec)
        result = _judge("train", code, output, spec, host, trained, train_seconds, stopping=_set(stop))
        if result is not None:
            marker.write(result.outcome, error=result.error)
            return result
        if not RunLayout(run_dir).cost_report_json.is_file():
            error = "train exited 0 without a cost_report.json (stopped before the last step?)"
            marker.write(FAILED, error=error)
            return JobResult(spec.name, FAILED, True, error, True, code, host, trained, train_seconds)

    if _set(stop):
        marker.write(INTERRUPTED)
        return JobResult(spec.name, INTERRUPTED, bool(trained), host=host, trained=trained, train_seconds=train_seconds)
    marker.write("evaluating", log=str(run_dir / runstate.FLEET_LOG))
    code, output, evaluate_seconds = run_child(evaluate_args(spec), run_dir / runstate.FLEET_LOG, spec, stop)
    result = _judge("evaluate", code, output, spec, host, trained, train_seconds, evaluate_seconds, stopping=_set(stop))
    if result is None and not runstate.eval_complete(run_dir, base=spec.base):
        result = JobResult(
            spec.name, FAILED, True, "evaluate wrote no complete eval.json", True, code, host, trained, train_seconds
        )
    if result is not None:
        marker.write(result.outcome, error=result.error)
        return result
    marker.write(FINISHED)
    return JobResult(spec.name, FINISHED, True, None, False, 0, host, trained, train_seconds, evaluate_seconds)


def _judge(
    what: str,
    code: int,
    output: str,
    spec: JobSpec,
    host: str,
    trained: str,
    train_seconds: float,
    evaluate_seconds: float = 0.0,
    *,
    stopping: bool,
) -> JobResult | None:
    """None when the child succeeded; else the job's result: interrupted (it was asked to stop),
    busy (another `train` holds the run directory), or failed (exit code 2, a mistake in the
    recipe or data, is not worth retrying; a crash, an out-of-memory or a kill is)."""
    if code == 0:
        return None
    common: dict[str, Any] = dict(
        exit_code=code, host=host, trained=trained, train_seconds=train_seconds, evaluate_seconds=evaluate_seconds
    )
    if (stopping and (code in STOPPED_CODES or code < 0)) or (code in STOPPED_CODES and _asked_to_stop(output)):
        return JobResult(spec.name, INTERRUPTED, True, f"{what} stopped; it continues from its checkpoint", **common)
    if what == "train" and code == 2 and BUSY_MESSAGE in output:
        return JobResult(spec.name, BUSY, False, "running elsewhere: " + failure_reason(code, output), **common)
    return JobResult(spec.name, FAILED, True, f"{what}: {failure_reason(code, output)}", code != 2, **common)


def _set(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _asked_to_stop(output: str) -> bool:
    """The child stopped because it was asked to (its own words), not because it crashed."""
    return "interrupted" in output or "stopping after this step" in output or "KeyboardInterrupt" in output
