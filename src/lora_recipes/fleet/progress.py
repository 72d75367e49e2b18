"""The lines a fleet prints as it goes: one per job when its state changes (queued, training step
N/M with the time left, evaluating, finished with its score, failed with the reason) and, while
training, again every `every` seconds; and a fleet line, done/total with the spend so far and the
time left, whenever a job ends and every `every` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from lora_recipes.fleet.state import RecipeRecord


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = max(round(seconds), 0)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def score_text(record: RecipeRecord) -> str:
    if record.score is None:
        return "no score"
    text = f"{record.metric or 'score'} {record.score:.3f}"
    return text + (f" (base {record.base_score:.3f})" if record.base_score is not None else "")


def money(value: float | None) -> str:
    return "$?" if value is None else f"${value:,.4f}"


def training_text(record: RecipeRecord) -> str:
    if record.step is None:
        return "training: loading the model and data"
    total = f"/{record.total_steps:,}" if record.total_steps is not None else ""
    left = f", {clock(record.seconds_left)} left" if record.seconds_left is not None else ""
    return f"training step {record.step:,}{total}{left}"


class Progress:
    """Status lines on `stream` (a job's line is printed when its kind changes, or every `every`
    seconds while it stays the same)."""

    def __init__(self, stream: TextIO, *, every: float = 30.0, now: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.every = every
        self.now = now
        self.shown: dict[str, tuple[str, float]] = {}

    def line(self, key: str, kind: str, text: str) -> None:
        """Print `text` unless the last line for `key` had the same kind less than `every` s ago."""
        t = self.now()
        last = self.shown.get(key)
        if last is not None and last[0] == kind and t - last[1] < self.every:
            return
        self.shown[key] = (kind, t)
        self.stream.write(text + "\n")
        self.stream.flush()

    def job(self, name: str, kind: str, text: str) -> None:
        self.line(f"job:{name}", kind, f"{name}: {text}")

    def fleet(self, kind: str, text: str) -> None:
        self.line("fleet", kind, f"fleet: {text}")
