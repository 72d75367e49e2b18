"""`lora-recipes fleet`: the driver. It loads the recipes, skips the finished runs, queues the
rest on a backend, retries failed jobs up to --max-attempts (a mistake in a recipe or its data,
exit code 2, fails the same way every time and is not retried), records everything in fleet.json,
prints a line per job as it goes, and writes the leaderboard at the end.

SIGINT or SIGTERM stops the fleet cleanly: nothing new starts, every running child is asked to
stop (`train` writes a checkpoint), the state is saved and the command exits 130; the same command
resumes. A second signal stops waiting for the children (each still gets SIGTERM from the kernel
when its parent goes: see child.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from lora_recipes.errors import LoraRecipesError, UserError
from lora_recipes.fleet import runstate
from lora_recipes.fleet.job import BUSY, FAILED, FINISHED, INTERRUPTED, JobResult, JobSpec
from lora_recipes.fleet.progress import Progress, clock, money, score_text, training_text
from lora_recipes.fleet.recipes import DataOptions, FleetRecipe, load_fleet
from lora_recipes.fleet.state import BUSY as S_BUSY
from lora_recipes.fleet.state import FAILED as S_FAILED
from lora_recipes.fleet.state import FINISHED as S_FINISHED
from lora_recipes.fleet.state import INTERRUPTED as S_INTERRUPTED
from lora_recipes.fleet.state import INVALID as S_INVALID
from lora_recipes.fleet.state import QUEUED as S_QUEUED
from lora_recipes.fleet.state import RUNNING as S_RUNNING
from lora_recipes.fleet.state import FleetState, RecipeRecord, fleet_lock, now_iso

BACKENDS = ("local", "ray")


class Backend(Protocol):
    """What the driver needs of a backend (local_backend.py, ray_backend.py)."""

    name: str
    slots: int  # jobs at once

    def describe(self) -> str: ...
    def submit(self, spec: JobSpec) -> None: ...
    def wait(self, timeout: float) -> list[JobResult]: ...
    def active(self) -> int: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class FleetOptions:
    runs: Path
    overrides: tuple[str, ...] = ()
    data: DataOptions = field(default_factory=DataOptions)
    base: bool = False
    backend: str = "local"
    parallel: int | None = None
    ray_address: str | None = None
    max_attempts: int = 3
    cpus_per_job: int | None = None
    grace_seconds: float = 600.0
    tick_seconds: float = 1.0
    progress_every: float = 30.0  # seconds between repeated lines of an unchanged job
    state_every: float = 5.0  # seconds between writes of fleet.json for progress alone


def make_backend(options: FleetOptions) -> Backend:
    if options.backend == "local":
        from lora_recipes.fleet.local_backend import LocalBackend

        return LocalBackend(parallel=options.parallel, cpus_per_job=options.cpus_per_job)
    if options.backend == "ray":
        from lora_recipes.fleet.ray_backend import RayBackend, runs_path_is_relative

        return RayBackend(
            address=options.ray_address,
            parallel=options.parallel,
            cpus_per_job=options.cpus_per_job,
            max_retries=options.max_attempts,
            runs_relative=runs_path_is_relative(options.runs),
        )
    raise UserError(f"--backend {options.backend}: use one of {', '.join(BACKENDS)}")


def fill_from_run(record: RecipeRecord) -> None:
    """Cost, tokens and scores from the run directory's own files."""
    run_dir = Path(record.run_dir)
    report = runstate.cost_report(run_dir)
    if report is not None:
        record.cost_usd = report.get("total_cost_usd")
        record.gpu_hours = report.get("gpu_hours")
        record.tokens = report.get("tokens_trained")
        record.total_steps = record.step = report.get("steps")
        record.seconds_left = None
    result = runstate.eval_result(run_dir)
    if result is not None:
        metric = result.get("metric")
        record.metric = metric
        scores = result.get("scores", {})
        record.score = scores.get("adapter", {}).get(metric)
        record.base_score = scores.get("base", {}).get(metric)


class Driver:
    def __init__(
        self,
        recipes: Sequence[FleetRecipe],
        options: FleetOptions,
        state: FleetState,
        runs: Path,
        backend: Backend,
        err: TextIO,
    ) -> None:
        self.recipes = {r.name: r for r in recipes}
        self.options = options
        self.state = state
        self.runs = runs
        self.backend = backend
        self.progress = Progress(err, every=options.progress_every)
        self.queue: list[str] = []
        self.tokens: dict[str, str] = {}  # running jobs: name -> submission token
        self.failures: Counter[str] = Counter()
        self.durations: list[float] = []  # train + evaluate seconds of jobs that trained from the start
        self.evaluations: list[float] = []
        self.eval_started: dict[str, float] = {}  # running evaluations: name -> when (time.time())
        self.stop_requested = 0  # signals received
        self.stopping = False
        self.stopped_tokens: dict[str, str] = {}  # the jobs running when the stop came
        self.last_save = 0.0

    # -- records ------------------------------------------------------------------------------

    def record(self, name: str) -> RecipeRecord:
        return self.state.recipes[name]

    def prepare(self) -> None:
        """A record per recipe; invalid ones marked, finished ones filled in, the rest queued."""
        for r in self.recipes.values():
            run_dir = str(self.runs / r.name)
            rec = self.state.recipes.get(r.name) or RecipeRecord(r.name, str(r.file), run_dir)
            self.state.recipes[r.name] = rec
            rec.recipe, rec.run_dir, rec.data = str(r.file.resolve()), run_dir, r.data.path
            rec.phase, rec.seconds_left = None, None
            if not r.valid:
                rec.status, rec.errors = S_INVALID, list(r.errors)
                rec.last_error = r.errors[0] if r.errors else "invalid"
                more = f" (+{len(r.errors) - 1} more)" if len(r.errors) > 1 else ""
                self.progress.job(r.name, "invalid", f"invalid: {rec.last_error}{more}")
                continue
            rec.errors = []
            if runstate.phase(Path(run_dir), base=self.options.base) == runstate.DONE:
                rec.status = S_FINISHED
                fill_from_run(rec)
                self.progress.job(r.name, "done", f"finished earlier: {score_text(rec)}")
                continue
            rec.status = S_QUEUED
            self.queue.append(r.name)
            self.progress.job(r.name, "queued", "queued")

    def spec(self, name: str) -> JobSpec:
        r, rec = self.recipes[name], self.record(name)
        token = uuid.uuid4().hex
        self.tokens[name] = token
        return JobSpec(
            name=name,
            recipe=str(r.file.resolve()),
            runs=str(self.runs),
            overrides=tuple(self.options.overrides),
            data=r.data.path,
            base=self.options.base,
            attempt=rec.attempts + 1,
            cwd=os.getcwd(),
            grace_seconds=self.options.grace_seconds,
            token=token,
        )

    def take(self, result: JobResult) -> None:
        """A job ended: record it, and queue it again when a retry is due."""
        name = result.name
        rec = self.record(name)
        self.tokens.pop(name, None)
        phase = rec.phase
        rec.phase, rec.seconds_left = None, None
        if result.started:
            rec.attempts += 1
        rec.train_seconds += result.train_seconds
        rec.evaluate_seconds += result.evaluate_seconds
        if result.host:
            rec.host = result.host
        if result.started or result.outcome != FINISHED:
            rec.history.append(
                {
                    "attempt": rec.attempts,
                    "at": now_iso(),
                    "outcome": result.outcome,
                    "error": result.error,
                    "exit_code": result.exit_code,
                    "host": result.host,
                    "trained": result.trained,
                    "train_seconds": round(result.train_seconds, 3),
                    "evaluate_seconds": round(result.evaluate_seconds, 3),
                }
            )
        if result.outcome == FINISHED:
            rec.status, rec.finished = S_FINISHED, now_iso()
            fill_from_run(rec)
            if result.trained == "started":
                self.durations.append(result.train_seconds + result.evaluate_seconds)
            if result.evaluate_seconds:
                self.evaluations.append(result.evaluate_seconds)
            spent = rec.train_seconds + rec.evaluate_seconds
            self.progress.job(name, "done", f"finished: {score_text(rec)}, {money(rec.cost_usd)}, {clock(spent)}")
        elif result.outcome == INTERRUPTED:
            rec.status = S_INTERRUPTED
            if phase == "evaluating":
                where = " while evaluating"
            else:
                where = f" at step {rec.step:,}" if rec.step is not None else ""
            self.progress.job(name, "stopped", f"stopped{where}; the next run resumes it")
        elif result.outcome == BUSY:
            rec.status, rec.last_error = S_BUSY, result.error
            self.progress.job(name, "busy", f"not started: {result.error}")
        else:
            assert result.outcome == FAILED
            self.failures[name] += 1
            rec.last_error = result.error
            tries = self.failures[name]
            if result.retry and self.stopping:  # killed while the fleet stopped: the next run goes on
                rec.status = S_INTERRUPTED
                self.progress.job(name, "stopped", f"stopped: {result.error}; the next run resumes it")
            elif result.retry and tries < self.options.max_attempts:
                rec.status = S_QUEUED
                self.queue.append(name)
                self.progress.job(
                    name,
                    f"retry{tries}",
                    f"failed (try {tries} of {self.options.max_attempts}), retrying: {result.error}",
                )
            else:
                rec.status = S_FAILED
                why = f"after {tries} tries" if result.retry else "(not retried: fix the recipe or its data)"
                self.progress.job(name, "failed", f"failed {why}: {result.error}")
        self.save(force=True)

    # -- progress -----------------------------------------------------------------------------

    def observe(self) -> None:
        """Read the running jobs' phase and progress from their files; print what changed."""
        for name, token in list(self.tokens.items()):
            rec = self.record(name)
            marker = runstate.read_json(runstate.job_file(self.runs, name))
            if not isinstance(marker, dict) or marker.get("token") != token:
                continue  # not started yet (on Ray: waiting for resources)
            phase = marker.get("phase")
            if phase not in ("training", "evaluating"):
                continue
            if rec.status != S_RUNNING:
                rec.status = S_RUNNING
                rec.started = rec.started or marker.get("since")
            rec.phase, rec.host = phase, marker.get("host")
            if phase == "training":
                prog = runstate.training_progress(Path(rec.run_dir))
                if prog is not None:
                    rec.step, rec.total_steps, rec.seconds_left = prog.step, prog.total, prog.seconds_left
                attempt = f" (try {self.failures[name] + 1})" if self.failures[name] else ""
                kind = "training" if rec.step is not None else "loading"
                self.progress.job(name, kind, training_text(rec) + attempt)
            else:
                rec.seconds_left = None
                self.eval_started[name] = float(marker.get("clock") or time.time())
                self.progress.job(name, "evaluating", "evaluating")
        self.fleet_line()
        self.save()

    def spend(self) -> float:
        total = 0.0
        for rec in self.state.recipes.values():
            if rec.cost_usd is not None:
                total += rec.cost_usd
            elif rec.status == S_RUNNING and rec.phase == "training":
                marker = runstate.read_json(runstate.job_file(self.runs, rec.name))
                log = Path(marker["log"]) if isinstance(marker, dict) and marker.get("log") else None
                total += (runstate.logged_cost(log) or 0.0) if log else 0.0
        return total

    def seconds_left(self) -> float | None:
        """The fleet's time left: the running jobs' and the queued ones' work over the jobs that
        run at once (None until a job's pace is known)."""
        running = [r for r in self.state.recipes.values() if r.name in self.tokens]
        queued = [n for n in self.queue]
        evaluation = statistics.fmean(self.evaluations) if self.evaluations else 0.0
        per_job = statistics.fmean(self.durations) if self.durations else None
        lefts = []
        for rec in running:
            if rec.phase == "evaluating":
                since = time.time() - self.eval_started.get(rec.name, time.time())
                lefts.append(max(evaluation - since, 0.0) if self.evaluations else 0.0)
            elif rec.seconds_left is not None:
                lefts.append(rec.seconds_left + evaluation)
            elif per_job is not None:
                lefts.append(per_job)
            else:
                return None
        if queued and per_job is None:
            return None
        width = max(1, min(self.backend.slots, len(running) + len(queued)))
        work = sum(lefts) + len(queued) * (per_job or 0.0)
        return max(max(lefts, default=0.0), work / width)

    def fleet_line(self) -> None:
        names = [n for n in self.recipes]
        statuses = Counter(self.record(n).status for n in names)
        done = statuses[S_FINISHED]
        parts = [f"{done}/{len(names)} done"]
        for status in (S_RUNNING, S_QUEUED, S_FAILED, S_INVALID, S_INTERRUPTED, S_BUSY):
            if statuses[status]:
                parts.append(f"{statuses[status]} {status}")
        left = self.seconds_left() if self.tokens or self.queue else 0.0
        text = f"{', '.join(parts)}; {money(self.spend())} spent; {clock(left)} left"
        self.progress.fleet(f"{done}:{statuses[S_FAILED]}:{statuses[S_RUNNING]}", text)

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_save >= self.options.state_every:
            self.state.save(self.runs)
            self.last_save = now

    # -- the loop -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM ask the fleet to stop (see the module notes)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: object) -> None:
            self.stop_requested += 1

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def loop(self) -> None:
        deadline: float | None = None
        while self.queue or self.backend.active():
            if self.stop_requested and not self.stopping:
                self.stopping = True
                deadline = time.monotonic() + self.options.grace_seconds + 30
                running = self.backend.active()
                self.progress.fleet("stopping", f"stopping: {running} running job(s) asked to write a checkpoint")
                self.stopped_tokens = dict(self.tokens)
                self.backend.stop()
                for name in self.queue:
                    self.record(name).status = S_INTERRUPTED
                self.queue.clear()
            if self.stopping and (self.stop_requested > 1 or (deadline is not None and time.monotonic() > deadline)):
                break
            while self.queue and not self.stopping and self.backend.active() < self.backend.slots:
                name = self.queue.pop(0)
                self.backend.submit(self.spec(name))
                self.record(name).status = S_QUEUED
            for result in self.backend.wait(self.options.tick_seconds):
                self.take(result)
            self.observe()
        for name in list(self.tokens):  # gave up waiting for them
            self.record(name).status = S_INTERRUPTED
        if self.stopping and self.stop_requested < 2:
            self.settle(deadline)
        self.save(force=True)

    def settle(self, deadline: float | None) -> None:
        """After a stop, wait until every job that was running says it has stopped (a Ray task is
        reported cancelled as soon as it is asked, before its child has written its checkpoint;
        shutting Ray down earlier would kill the child half-way)."""
        while deadline is None or time.monotonic() < deadline:
            busy = []
            for name, token in self.stopped_tokens.items():
                marker = runstate.read_json(runstate.job_file(self.runs, name))
                mine = isinstance(marker, dict) and marker.get("token") == token
                if mine and marker.get("phase") in ("training", "evaluating"):
                    busy.append(name)
            if not busy or self.stop_requested > 1:
                return
            time.sleep(0.2)


def exit_code(state: FleetState, names: Sequence[str], stopped: bool) -> int:
    """130 when stopped; 2 when a recipe is invalid; 1 when one failed or is busy; else 0."""
    statuses = {state.recipes[n].status for n in names}
    if stopped:
        return 130
    if S_INVALID in statuses:
        return 2
    if statuses & {S_FAILED, S_BUSY, S_INTERRUPTED, S_QUEUED, S_RUNNING}:
        return 1
    return 0


def summary_lines(state: FleetState, names: Sequence[str], wall: float, stopped: bool) -> list[str]:
    records = [state.recipes[n] for n in names]
    done = [r for r in records if r.status == S_FINISHED]
    cost = sum(r.cost_usd or 0.0 for r in done)
    hours = sum(r.gpu_hours or 0.0 for r in done)
    head = f"fleet: {len(done)} of {len(records)} finished in {clock(wall)}; {money(cost)}, {hours:.4f} GPU-hours"
    lines = [head]
    for r in records:
        if r.status in (S_FAILED, S_INVALID, S_BUSY):
            lines.append(f"  {r.name}: {r.status}: {r.last_error}")
        elif r.status == S_INTERRUPTED:
            lines.append(f"  {r.name}: stopped; run the same command again to resume it")
    if stopped:
        lines.append("stopped: run the same command again to resume (finished runs are skipped)")
    return lines


def run_fleet(
    files: Sequence[Path],
    options: FleetOptions,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    command: Sequence[str] = (),
) -> int:
    """The `fleet` command; returns its exit code (see `exit_code`). A UserError is raised before
    anything runs (duplicate names, a --data for no recipe, a relative --runs on a cluster)."""
    out, err = out or sys.stdout, err or sys.stderr
    if options.max_attempts < 1:
        raise UserError("--max-attempts must be 1 or more")
    recipes = load_fleet(files, options.overrides, options.data)
    runs = options.runs.expanduser().resolve()
    started = time.monotonic()
    with fleet_lock(runs):
        state = FleetState.load(runs) or FleetState(str(runs))
        backend = make_backend(options)
        session: dict[str, Any] = {"started": now_iso(), "command": list(command), "backend": backend.describe()}
        state.sessions.append(session)
        err.write(f"fleet of {len(recipes)} recipes into {runs} on {backend.describe()}\n")
        driver = Driver(recipes, options, state, runs, backend, err)
        try:
            with driver.stop_signals():
                driver.prepare()
                driver.save(force=True)
                driver.loop()
        finally:
            backend.close()
            session["ended"] = now_iso()
            session["wall_seconds"] = round(time.monotonic() - started, 3)
            session["stopped"] = driver.stopping
            state.save(runs)
        names = [r.name for r in recipes]
        for line in summary_lines(state, names, time.monotonic() - started, driver.stopping):
            out.write(line + "\n")
        try:
            from lora_recipes.fleet.leaderboard import write_leaderboard

            written = write_leaderboard(runs)
            out.write(f"leaderboard: {', '.join(str(p) for p in written)}\n")
        except LoraRecipesError as exc:
            err.write(f"warning: no leaderboard: {exc}\n")
        return exit_code(state, names, driver.stopping)
