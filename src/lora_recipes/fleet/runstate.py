"""What a fleet's run directory says about its job: the phase (new, part-trained, trained, done),
training progress, the cost report and the scores. Everything is read from the files `train` and
`evaluate` write (see the README's "run directory"), so the driver on one machine and a job on
another agree on what is done without talking to each other.

Fleet files of its own: `DIR/<name>/fleet.log` (every child's output), `DIR/<name>/eval/` (the
evaluation), and `DIR/.fleet/<name>.json` (the job's phase) and `DIR/.fleet/<name>.log` (the log
of a first `train` until its run directory exists: `train` refuses a folder that is not empty).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.training.run_dir import RunLayout

FLEET_LOG = "fleet.log"
EVAL_DIR = "eval"
EVAL_FILE = "eval.json"
INTERNAL_DIR = ".fleet"

NEW, PART_TRAINED, TRAINED, DONE = "new", "part-trained", "trained", "done"


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or torn."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def internal_dir(runs: Path) -> Path:
    return runs / INTERNAL_DIR


def job_file(runs: Path, name: str) -> Path:
    """The job's phase, written by the job as it goes (see job.py)."""
    return internal_dir(runs) / f"{name}.json"


def pending_log(runs: Path, name: str) -> Path:
    return internal_dir(runs) / f"{name}.log"


def eval_dir(run_dir: Path) -> Path:
    return run_dir / EVAL_DIR


def eval_result(run_dir: Path) -> dict[str, Any] | None:
    """The fleet's evaluation of the run (eval/eval.json), or None."""
    result = read_json(eval_dir(run_dir) / EVAL_FILE)
    return result if isinstance(result, dict) else None


def eval_complete(run_dir: Path, *, base: bool) -> bool:
    """The evaluation scored the adapter (and the base model when asked) with an answer each."""
    result = eval_result(run_dir)
    if result is None:
        return False
    scores = result.get("scores", {})
    wanted = ["adapter", "base"] if base else ["adapter"]
    return all(name in scores and any(v is not None for v in scores[name].values()) for name in wanted)


def phase(run_dir: Path, *, base: bool) -> str:
    """new: nothing trained (no recipe.resolved.yaml); part-trained: started, not finished (resume
    it); trained: cost_report.json written, evaluation missing; done: both."""
    layout = RunLayout(run_dir)
    if not layout.resolved_recipe.is_file():
        return NEW
    if not layout.cost_report_json.is_file():
        return PART_TRAINED
    return DONE if eval_complete(run_dir, base=base) else TRAINED


def cost_report(run_dir: Path) -> dict[str, Any] | None:
    report = read_json(RunLayout(run_dir).cost_report_json)
    return report if isinstance(report, dict) else None


@dataclass(frozen=True)
class TrainingProgress:
    step: int  # optimizer steps done
    total: int | None  # from plan.json; None until training has planned
    seconds_left: float | None


def _tail(path: Path, size: int = 65536) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def training_progress(run_dir: Path, recent: int = 20) -> TrainingProgress | None:
    """Steps done (metrics.jsonl), steps in all (plan.json) and the time left at the pace of the
    last `recent` steps; None before the first step."""
    layout = RunLayout(run_dir)
    steps: list[dict[str, Any]] = []
    for line in _tail(layout.metrics).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "train":
            steps.append(record)
    if not steps:
        return None
    plan = read_json(layout.plan)
    total = plan.get("steps", {}).get("total") if isinstance(plan, dict) and plan.get("steps") else None
    step = int(steps[-1]["step"])
    last = [float(r.get("seconds", 0.0)) for r in steps[-recent:]]
    left = None
    if total is not None and last:
        left = sum(last) / len(last) * max(int(total) - step, 0)
    return TrainingProgress(step, int(total) if total is not None else None, left)


_COST = re.compile(r"\| \$([0-9][0-9,]*\.?[0-9]*)\s*$")


def logged_cost(log: Path) -> float | None:
    """The spend so far of a training run, from the last progress line in its log."""
    for line in reversed(_tail(log, 16384).splitlines()):
        match = _COST.search(line)
        if match and line.startswith("step "):
            return float(match.group(1).replace(",", ""))
    return None


def adapter_rank(run_dir: Path) -> int | None:
    """The largest LoRA rank of the run's adapter (r, or a larger rank_pattern entry)."""
    config = read_json(RunLayout(run_dir).adapter / "adapter_config.json")
    if not isinstance(config, dict) or not isinstance(config.get("r"), int):
        return None
    ranks = [config["r"], *(v for v in (config.get("rank_pattern") or {}).values() if isinstance(v, int))]
    return max(ranks)


def run_dirs(runs: Path) -> list[Path]:
    """The run directories of a fleet folder (those with a recipe.resolved.yaml), by name."""
    if not runs.is_dir():
        return []
    return sorted(
        p
        for p in runs.iterdir()
        if p.is_dir() and not p.name.startswith(".") and RunLayout(p).resolved_recipe.is_file()
    )
