"""What a run tells the world while it trains: metrics.jsonl, a progress line on stderr, and
TensorBoard or Weights & Biases when the recipe asks for them (and they are installed).

On a terminal the progress line is redrawn in place after every step; elsewhere (CI logs, a
file) a line is printed every `LOG_EVERY_SECONDS` and at the end, so logs stay short.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lora_recipes.training.run_dir import RunLayout, write_text_atomic

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
    """metrics.jsonl and the extra sinks the recipe asks for (TensorBoard, Weights & Biases).
    Only the main process writes; on the others every method does nothing."""

    def __init__(
        self,
        layout: RunLayout,
        *,
        enabled: bool,
        lines: int,
        report_to: tuple[str, ...],
        run_config: dict[str, Any],
        say: Callable[[str], None],
    ) -> None:
        """Continue `layout.metrics` after its first `lines` records (a resumed run rewrites what
        came after its checkpoint)."""
        self.enabled = enabled
        self.lines = lines
        self.tensorboard: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        truncate_metrics(layout.metrics, lines)
        self.file = layout.metrics.open("a", encoding="utf-8")
        if "tensorboard" in report_to:
            if importlib.util.find_spec("tensorboard") is None:
                say("trainer.report_to: tensorboard is not installed (pip install tensorboard); skipping it")
            else:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(log_dir=str(layout.tensorboard))
        if "wandb" in report_to:
            if importlib.util.find_spec("wandb") is None:
                say("trainer.report_to: wandb is not installed (pip install wandb); skipping it")
            else:
                import wandb

                name = layout.root.name
                self.wandb = wandb.init(project="lora-recipes", name=name, id=name, resume="allow", config=run_config)

    def record(self, record: dict[str, Any]) -> None:
        """Append one metrics record (and send its numbers to the extra sinks)."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.lines += 1
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(f"{record['event']}/{key}", value, record["step"])
        if self.wandb is not None:
            self.wandb.log({f"{record['event']}/{k}": v for k, v in numbers.items()}, step=record["step"])

    def close(self) -> None:
        if not self.enabled or self.file.closed:
            return
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


class ProgressLine:
    """The progress line: step, loss, speed, time left and cost so far. On a terminal it is
    redrawn in place after every step; elsewhere it is printed every `LOG_EVERY_SECONDS` and at
    the last step. Only the main process draws it."""

    def __init__(
        self, *, enabled: bool, total_steps: int, start_step: int, cost_per_second: float, stream: TextIO | None
    ) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.total = total_steps
        self.start_step = start_step
        self.cost_per_second = cost_per_second
        self.started = time.monotonic()
        self.last_line = 0.0
        self.tty = self.stream.isatty()
        self.open = enabled

    def update(self, step: int, loss: float, tokens_per_second: float, run_seconds: float) -> None:
        """Redraw (or, off a terminal, periodically print) the progress line after `step`."""
        if not self.enabled:
            return
        now = time.monotonic()
        done_here = step - self.start_step
        left = (now - self.started) / done_here * (self.total - step) if done_here > 0 else 0.0
        line = (
            f"step {step:,}/{self.total:,} | loss {loss:.4f} | {tokens_per_second:,.0f} tok/s | "
            f"{_clock(left)} left | ${run_seconds * self.cost_per_second:,.4f}"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif now - self.last_line >= LOG_EVERY_SECONDS or step == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_line = now

    def close(self) -> None:
        """End a line redrawn in place (once)."""
        if self.open and self.tty:
            self.stream.write("\n")
        self.open = False
