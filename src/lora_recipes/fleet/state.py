"""The fleet state file, DIR/fleet.json: per recipe its status, attempts, run directory, timings,
cost, score and last error, and one entry per run of the `fleet` command. Only the driver writes
it, always whole (a temporary file renamed over it), so a reader never sees a torn file.

The run directories are the truth about what is done (runstate.py); fleet.json is the record of
what the fleet did and saw, and what `fleet status` shows. The driver also holds DIR/.fleet.lock
while it runs: two drivers on one fleet folder would overwrite each other's record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lora_recipes.atomic import write_json_atomic
from lora_recipes.errors import UserError

STATE_FILE = "fleet.json"
LOCK_FILE = ".fleet.lock"
VERSION = 1

# A recipe's status: queued (waiting for a slot or, on Ray, for resources), running, finished,
# failed (after its attempts), interrupted (the fleet was stopped; it resumes on the next run),
# busy (another process is training it), invalid (the recipe or its data option is wrong).
QUEUED, RUNNING, FINISHED, FAILED, INTERRUPTED, BUSY, INVALID = (
    "queued",
    "running",
    "finished",
    "failed",
    "interrupted",
    "busy",
    "invalid",
)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RecipeRecord:
    name: str
    recipe: str  # the recipe file
    run_dir: str
    status: str = QUEUED
    phase: str | None = None  # while running: training or evaluating
    attempts: int = 0  # jobs that ran something, over every run of the fleet
    data: str | None = None  # the data it trains on (None: the recipe's own)
    host: str | None = None
    started: str | None = None  # first time it started
    finished: str | None = None
    train_seconds: float = 0.0  # wall time of the fleet's train children, every attempt
    evaluate_seconds: float = 0.0
    cost_usd: float | None = None  # from the run's cost_report.json
    gpu_hours: float | None = None
    tokens: int | None = None
    metric: str | None = None
    score: float | None = None  # the adapter's
    base_score: float | None = None
    step: int | None = None  # training progress
    total_steps: int | None = None
    seconds_left: float | None = None
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)  # an invalid recipe's mistakes
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per job result

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RecipeRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class FleetState:
    runs: str
    created: str = field(default_factory=now_iso)
    updated: str = field(default_factory=now_iso)
    recipes: dict[str, RecipeRecord] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)  # one per `fleet` command

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "runs": self.runs,
            "created": self.created,
            "updated": self.updated,
            "recipes": {name: asdict(r) for name, r in self.recipes.items()},
            "sessions": self.sessions,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FleetState:
        return cls(
            runs=d["runs"],
            created=d.get("created", now_iso()),
            updated=d.get("updated", now_iso()),
            recipes={name: RecipeRecord.from_json(r) for name, r in d.get("recipes", {}).items()},
            sessions=list(d.get("sessions", [])),
        )

    def save(self, runs: Path) -> None:
        self.updated = now_iso()
        write_json_atomic(runs / STATE_FILE, self.to_json())

    @classmethod
    def load(cls, runs: Path) -> FleetState | None:
        """The fleet's state, or None when the folder has none yet."""
        path = runs / STATE_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{path}: not a fleet state file ({exc}); move it away to start the record afresh"
            ) from None

    def wall_seconds(self) -> float:
        return sum(float(s.get("wall_seconds") or 0.0) for s in self.sessions)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def fleet_lock(runs: Path) -> Iterator[None]:
    """Hold DIR/.fleet.lock (PID and host) while the block runs; a live driver's lock refuses a
    second, a dead one's is taken over. A lock from another host is taken as live."""
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / LOCK_FILE
    me: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = 0, me["host"]
            if pid and (host != me["host"] or _alive(pid)):
                raise UserError(
                    f"{runs} is in use by another `lora-recipes fleet` (process {pid} on {host}); wait for it, or stop "
                    "it first (its jobs checkpoint and the next run resumes them)"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"{runs}: could not take {path}; another fleet driver is starting there")
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text(encoding="utf-8")) == me:
                path.unlink()
