"""What a run tells the world while it trains: metrics.jsonl, a progress line on stderr, and
the experiment trackers the recipe asks for (TensorBoard, W&B, MLflow: training.tracking).

On a terminal the progress line is redrawn in place after every step; elsewhere (CI logs, a
file) a line is printed every `LOG_EVERY_SECONDS` and at the end, so logs stay short.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lora_recipes.training.run_dir import RunLayout, write_text_atomic
from lora_recipes.training.tracking import Status, Trackers

if TYPE_CHECKING:
    from lora_recipes.recipe.types import Tracking

LOG_EVERY_SECONDS = 30.0


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a torn last line of a killed run
    return records


def truncate_metrics(path: Path, lines: int) -> None:
    """Keep the first `lines` records: a resumed run rewrites what came after its checkpoint."""
    kept = read_metrics(path)[:lines]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class MetricsLog:
    """metrics.jsonl and the experiment trackers the recipe asks for (`trainer.report_to`, see
    training.tracking). Only the main process writes; on the others every method does nothing."""

    def __init__(
        self,
        layout: RunLayout,
        *,
        enabled: bool,
        lines: int,
        report_to: tuple[str, ...],
        run_config: dict[str, Any],
        say: Callable[[str], None],
        tracking: Tracking,
        name: str = "",
        resumed: bool = False,
        from_step: int = 0,
    ) -> None:
        """Continue `layout.metrics` after its first `lines` records (a resumed run rewrites what
        came after its checkpoint) and start the trackers (`tracking`: where they log; `resumed`
        and `from_step`: a resumed run continues its tracking runs from its checkpoint's step)."""
        self.enabled = enabled
        self.lines = lines
        self.trackers = Trackers([], say)
        self.upload_artifacts = tracking.artifacts
        if not enabled:
            return
        truncate_metrics(layout.metrics, lines)
        self.file = layout.metrics.open("a", encoding="utf-8")
        if report_to:
            self.trackers = Trackers.open(
                layout,
                report_to=report_to,
                settings=tracking,
                config=run_config,
                name=name or layout.root.name,
                resumed=resumed,
                from_step=from_step,
                say=say,
            )

    def record(self, record: dict[str, Any]) -> None:
        """Append one metrics record (and send its numbers to the trackers)."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record, allow_nan=False) + "\n")  # train.py writes null, never NaN
        self.file.flush()
        self.lines += 1
        numbers = {
            f"{record['event']}/{k}": float(v)
            for k, v in record.items()
            if isinstance(v, int | float) and k != "step" and math.isfinite(v)
        }
        if numbers:
            self.trackers.log(numbers, record["step"])

    def finish(self, layout: RunLayout, *, full: bool) -> None:
        """A finished run: its files to the trackers that store them (unless `tracking.artifacts`
        is false), then every tracking run ends."""
        if not self.enabled:
            return
        if self.upload_artifacts:
            self.trackers.upload(layout, full=full)
        self.trackers.close("finished")

    def close(self, status: Status = "killed") -> None:
        """Close metrics.jsonl and end the tracking runs still open with `status` (killed: stopped
        to be resumed; failed: an error)."""
        if not self.enabled or self.file.closed:
            return
        self.file.close()
        self.trackers.close(status)


class ProgressLine:
    """The progress line: step, loss, speed, time left and cost so far, and while validating the
    validation's batches done. On a terminal it is redrawn in place after every step and every
    validation batch; elsewhere it is printed every `LOG_EVERY_SECONDS` and at the last step. Only
    the main process draws it.

    Time left counts training and validation apart: the seconds per training step (this session's
    wall time less its validations, over its steps) times the steps left, plus the seconds per
    validation times the validations left (`eval_steps` and the last step). Before the first
    validation has been timed, one is guessed from the training speed: `validation_tokens` (computed
    tokens of one validation) at three times the training tokens/s, a forward pass against a
    forward and a backward one."""

    def __init__(
        self,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        cost_per_second: float,
        stream: TextIO | None,
        eval_steps: int | None = None,
        validation_tokens: int = 0,
    ) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.total = total_steps
        self.start_step = start_step
        self.cost_per_second = cost_per_second
        self.eval_steps = eval_steps  # None: the run does not validate
        self.validation_tokens = validation_tokens
        self.started = time.monotonic()
        self.last_line = 0.0
        self.tty = self.stream.isatty()
        self.open = enabled
        self.validation_seconds = 0.0  # this session's validations, all of them
        self.validations = 0
        self.validation_started: float | None = None
        self.step = start_step
        self.loss: float | None = None
        self.tokens_per_second = 0.0
        self.run_seconds_at_step = 0.0
        self.step_time = self.started

    def validations_left(self, step: int) -> int:
        """Validations still to run after `step` (at multiples of eval_steps and at the last step)."""
        if self.eval_steps is None or step >= self.total:
            return 0
        every = self.eval_steps
        later = self.total // every - step // every
        if self.total % every:
            later += 1
        return later

    def validates_at(self, step: int) -> bool:
        return self.eval_steps is not None and (step % self.eval_steps == 0 or step == self.total)

    def seconds_per_validation(self) -> float:
        if self.validations:
            return self.validation_seconds / self.validations
        if self.tokens_per_second > 0 and self.validation_tokens:
            return self.validation_tokens / (3 * self.tokens_per_second)
        return 0.0

    def seconds_left(self, step: int, now: float, *, validating: tuple[int, int] | None = None) -> float:
        """Training steps left at this session's seconds per step, and validations left (the one
        running now, from its batches so far)."""
        done_here = step - self.start_step
        spent = now - self.started - self.validation_seconds
        if validating is not None and self.validation_started is not None:
            spent -= now - self.validation_started
        per_step = spent / done_here if done_here > 0 else 0.0
        validations = self.validations_left(step) + (validating is None and self.validates_at(step))
        left = per_step * (self.total - step) + self.seconds_per_validation() * validations
        if validating is not None and self.validation_started is not None:
            done, total = validating
            elapsed = now - self.validation_started
            current = elapsed / done * (total - done) if done else self.seconds_per_validation()
            left += current
        return left

    def update(self, step: int, loss: float, tokens_per_second: float, run_seconds: float) -> None:
        """Redraw (or, off a terminal, periodically print) the progress line after `step`."""
        if not self.enabled:
            return
        now = time.monotonic()
        self.step, self.loss, self.tokens_per_second = step, loss, tokens_per_second
        self.run_seconds_at_step, self.step_time = run_seconds, now
        left = self.seconds_left(step, now)
        line = (
            f"step {step:,}/{self.total:,} | loss {loss:.4f} | {tokens_per_second:,.0f} tok/s | "
            f"{_clock(left)} left | ${run_seconds * self.cost_per_second:,.4f}"
        )
        self._draw(line, now, final=step == self.total)

    def validation_start(self) -> None:
        if self.enabled:
            self.validation_started = time.monotonic()

    def validation_progress(self, done: int, total: int) -> None:
        """Redraw the line while validating: `done` of `total` validation batches (this process's)."""
        if not self.enabled or self.validation_started is None:
            return
        now = time.monotonic()
        left = self.seconds_left(self.step, now, validating=(done, total))
        run_seconds = self.run_seconds_at_step + (now - self.step_time)
        loss = f" | loss {self.loss:.4f}" if self.loss is not None else ""
        line = (
            f"step {self.step:,}/{self.total:,}{loss} | validating {done:,}/{total:,} batches | "
            f"{_clock(left)} left | ${run_seconds * self.cost_per_second:,.4f}"
        )
        self._draw(line, now, final=False)

    def validation_end(self) -> None:
        if not self.enabled or self.validation_started is None:
            return
        self.validation_seconds += time.monotonic() - self.validation_started
        self.validations += 1
        self.validation_started = None

    def _draw(self, line: str, now: float, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif now - self.last_line >= LOG_EVERY_SECONDS or final:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_line = now

    def close(self) -> None:
        """End a line redrawn in place (once)."""
        if self.open and self.tty:
            self.stream.write("\n")
        self.open = False
