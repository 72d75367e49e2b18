"""The fleet's leaderboard: one table of tasks by systems, from the files in each run directory.

Columns: the base model and the adapter (the fleet's eval/eval.json), any endpoint scored into an
eval*/ folder of the run (an adapter served under its own name is the "served adapter" column;
another model keeps its name), then LoRA Land's published Mistral-7B fine-tuned, GPT-4 and
GPT-3.5 scores for the recipe's `evaluation.reference_task` (only where LoRA Land's metric
measures what the recipe's does). A mean per system over the tasks whose adapter was scored (with
how many of them it covers, so a partial fleet compares like with like),
per adapter its metric, score, cost, GPU-hours, tokens and training time (cost_report.json), the
fleet's totals, and the commands that serve every adapter (serving.py). A cell with no value is
"–": a partial fleet shows what is missing.

`write_leaderboard(DIR)` writes leaderboard.md, leaderboard.json, leaderboard.png (chart.py) and
leaderboard.html (html.py).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from lora_recipes.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from lora_recipes.evaluation.reference import reference_scores
from lora_recipes.fleet import runstate
from lora_recipes.fleet.serving import ServedAdapter, server_base, serving_commands
from lora_recipes.fleet.state import FleetState, now_iso
from lora_recipes.training.run_dir import RunLayout

MISSING = "–"
BASE, ADAPTER, SERVED = "base", "adapter", "served adapter"
REFERENCE = ("LoRA Land Mistral-7B FT", "GPT-4", "GPT-3.5")
FILES = ("leaderboard.md", "leaderboard.json", "leaderboard.png", "leaderboard.html")


def _resolved(run_dir: Path) -> dict[str, Any]:
    import yaml

    try:
        content = yaml.safe_load(RunLayout(run_dir).resolved_recipe.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return content if isinstance(content, dict) else {}


def _eval_results(run_dir: Path) -> list[dict[str, Any]]:
    """The run's eval.json files: the fleet's eval/ first, then other eval*/ folders, oldest first."""
    found = []
    if run_dir.is_dir():
        for folder in run_dir.iterdir():
            path = folder / runstate.EVAL_FILE
            if folder.is_dir() and folder.name.startswith("eval") and path.is_file():
                found.append((folder.name != runstate.EVAL_DIR, path.stat().st_mtime, path))
    results = []
    for _, _, path in sorted(found):
        result = runstate.read_json(path)
        if isinstance(result, dict) and isinstance(result.get("scores"), dict):
            results.append(result)
    return results


def _column(system: str, summary: dict[str, Any], task: str) -> str:
    kind = summary.get("kind")
    if kind in (BASE, ADAPTER):
        return str(kind)
    model = str(summary.get("model") or system)
    return SERVED if model == task else model


def scored_tasks(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in board["tasks"] if t["scores"].get(ADAPTER) is not None]


def _recipe_file(record: Any) -> dict[str, Any]:
    """The recipe file of a task with no run directory yet (its metric and reference task)."""
    import yaml

    try:
        content = yaml.safe_load(Path(record.recipe).read_text(encoding="utf-8")) if record is not None else None
    except (OSError, yaml.YAMLError):
        return {}
    return content if isinstance(content, dict) else {}


def _task(name: str, run_dir: Path, record: Any) -> dict[str, Any]:
    resolved = _resolved(run_dir) or _recipe_file(record)
    evaluation = resolved.get("evaluation") or {}
    metric: str | None = evaluation.get("metric")
    scores: dict[str, float | None] = {}
    for result in _eval_results(run_dir):
        metric = result.get("metric") or metric
        for system, summary in (result.get("systems") or {}).items():
            value = (result["scores"].get(system) or {}).get(result.get("metric"))
            column = _column(system, summary if isinstance(summary, dict) else {}, name)
            if value is not None or column not in scores:
                scores[column] = value
    reference_task = evaluation.get("reference_task")
    ref = reference_scores(reference_task)
    comparable = bool(ref and metric and ref.comparable_with(metric))
    if ref is not None and comparable:
        scores.update(zip(REFERENCE, (ref.mistral7b_ft, ref.gpt4, ref.gpt35), strict=True))
    report = runstate.cost_report(run_dir) or {}
    status = record.status if record is not None else None
    if status is None:
        status = {runstate.DONE: "finished", runstate.NEW: "not started"}.get(
            runstate.phase(run_dir, base=False), "unfinished"
        )
    adapter_dir = RunLayout(run_dir).adapter
    config = runstate.read_json(adapter_dir / "adapter_config.json")
    adapter_base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return {
        "name": name,
        "status": status,
        "error": record.last_error if record is not None and status != "finished" else None,
        "metric": metric,
        "reference_task": reference_task,
        "reference_metric": ref.metric if ref is not None else None,
        "comparable": comparable,
        "scores": scores,
        "run_dir": str(run_dir),
        "base_model": resolved.get("base_model"),
        "server_base": server_base(str(resolved.get("base_model") or ""), adapter_base) if config else None,
        "adapter": str(adapter_dir) if config else None,
        "rank": runstate.adapter_rank(run_dir),
        "cost_usd": report.get("total_cost_usd"),
        "gpu_hours": report.get("gpu_hours"),
        "tokens": report.get("tokens_trained"),
        "training_seconds": report.get("wall_seconds"),
        "steps": report.get("steps"),
        "device": report.get("device_name"),
    }


def collect(runs: Path) -> dict[str, Any]:
    """The leaderboard of the fleet folder `runs`, as leaderboard.json holds it."""
    state = FleetState.load(runs)
    records = dict(state.recipes) if state is not None else {}
    names = list(records)
    names += [p.name for p in runstate.run_dirs(runs) if p.name not in records]
    tasks = [_task(n, Path(records[n].run_dir) if n in records else runs / n, records.get(n)) for n in names]
    endpoints = sorted({c for t in tasks for c in t["scores"]} - {BASE, ADAPTER, *REFERENCE})
    systems = [BASE, ADAPTER, *endpoints, *REFERENCE]
    scored = [t for t in tasks if t["scores"].get(ADAPTER) is not None]
    mean = {}
    for s in systems:  # over the tasks the adapters scored, so that the columns compare like with like
        values = [t["scores"][s] for t in scored if t["scores"].get(s) is not None]
        mean[s] = {"value": statistics.fmean(values) if values else None, "tasks": len(values)}
    finished = [t for t in tasks if t["cost_usd"] is not None]
    served = [
        ServedAdapter(
            t["name"],
            Path(t["adapter"]),
            t["server_base"],
            t["rank"],
            RunLayout(Path(t["run_dir"])).resolved_recipe,
            Path(t["run_dir"]),
        )
        for t in tasks
        if t["adapter"] and t["cost_usd"] is not None
    ]
    totals = {
        "tasks": len(tasks),
        "adapters": len(finished),
        "scored": sum(1 for t in tasks if t["scores"].get(ADAPTER) is not None),
        "failed": [t["name"] for t in tasks if t["status"] in ("failed", "invalid")],
        "cost_usd": sum(t["cost_usd"] or 0.0 for t in finished),
        "gpu_hours": sum(t["gpu_hours"] or 0.0 for t in finished),
        "tokens": sum(t["tokens"] or 0 for t in finished),
        "training_seconds": sum(t["training_seconds"] or 0.0 for t in finished),
        "fleet_wall_seconds": state.wall_seconds() if state is not None else None,
    }
    return {
        "runs": str(runs),
        "generated": now_iso(),
        "systems": systems,
        "tasks": tasks,
        "mean": mean,
        "totals": totals,
        "serving": serving_commands(served, runs),
    }


# -- markdown ---------------------------------------------------------------------------------


def score(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def money(value: float | None) -> str:
    return MISSING if value is None else f"${value:,.4f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def number(value: float | int | None, fmt: str = ",") -> str:
    return MISSING if value is None else format(value, fmt)


def lift(task: dict[str, Any]) -> float | None:
    a, b = task["scores"].get(ADAPTER), task["scores"].get(BASE)
    return None if a is None or b is None else a - b


def adapter_rows(board: dict[str, Any]) -> list[list[str]]:
    """The per-adapter table (also the HTML's)."""
    rows = []
    for t in board["tasks"]:
        d = lift(t)
        rows.append(
            [
                t["name"],
                t["status"],
                t["metric"] or MISSING,
                score(t["scores"].get(ADAPTER)),
                MISSING if d is None else f"{d:+.3f}",
                number(t["steps"]),
                number(t["tokens"]),
                duration(t["training_seconds"]),
                number(t["gpu_hours"], ",.4f"),
                money(t["cost_usd"]),
            ]
        )
    return rows


ADAPTER_HEAD = ["task", "status", "metric", "adapter", "lift over base", "steps", "tokens", "training time"]
ADAPTER_HEAD += ["GPU-hours", "cost"]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(board: dict[str, Any]) -> str:
    systems, tot = board["systems"], board["totals"]
    lines = [
        f"# Leaderboard: {board['runs']}",
        "",
        f"{tot['tasks']} tasks, {tot['adapters']} adapters trained, {tot['scored']} scored. "
        f"Missing values are {MISSING}.",
        "",
        _row(["task", "metric", *systems]),
        "|---|---|" + "---:|" * len(systems),
    ]
    for t in board["tasks"]:
        lines.append(_row([t["name"], t["metric"] or MISSING, *(score(t["scores"].get(s)) for s in systems)]))
    means = [
        MISSING
        if board["mean"][s]["value"] is None
        else f"{board['mean'][s]['value']:.3f} ({board['mean'][s]['tasks']})"
        for s in systems
    ]
    lines.append(_row([f"**mean** over the {len(scored_tasks(board))} scored tasks", "", *means]))
    notes = [
        f"{t['name']}: LoRA Land scored {t['reference_task']} with {t['reference_metric']}, not {t['metric']}; "
        "its numbers are left out"
        for t in board["tasks"]
        if t["reference_task"] and not t["comparable"] and t["metric"]
    ]
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    lines += ["", "## Adapters", "", _row(ADAPTER_HEAD), "|---|---|---|" + "---:|" * (len(ADAPTER_HEAD) - 3)]
    lines.extend(_row(r) for r in adapter_rows(board))
    failed = [t for t in board["tasks"] if t["error"]]
    if failed:
        lines.append("")
        lines.extend(f"- {t['name']} ({t['status']}): {t['error']}" for t in failed)
    lines += [
        "",
        "## Fleet",
        "",
        f"- adapters: {tot['adapters']} of {tot['tasks']} trained"
        + (f"; failed: {', '.join(tot['failed'])}" if tot["failed"] else ""),
        f"- cost: {money(tot['cost_usd'])}, {tot['gpu_hours']:.4f} GPU-hours, {tot['tokens']:,} tokens trained",
        f"- training time: {duration(tot['training_seconds'])} over all runs; fleet wall time "
        f"{duration(tot['fleet_wall_seconds'])}",
    ]
    lines += ["", "## Serving the fleet", ""]
    serving = board["serving"]
    if not any(serving.values()):
        lines.append("No adapter is trained yet.")
    else:
        blocks = [
            ("vLLM: every adapter from one GPU, each by its task's name", serving["vllm"]),
            ("LoRAX: one container, adapters loaded per request", serving["lorax"]),
            ("Score each adapter as served (the served adapter column)", serving["evaluate"]),
        ]
        for title, commands in blocks:
            lines += [f"{title}:", "", "```sh", *commands, "```", ""]
        lines.pop()
    return "\n".join(lines) + "\n"


def write_leaderboard(runs: Path) -> list[Path]:
    """leaderboard.md, .json, .png (when matplotlib is installed) and .html in `runs`; returns
    the files written."""
    from lora_recipes.fleet.chart import render_png
    from lora_recipes.fleet.html import render_html

    board = collect(runs)
    paths = [runs / name for name in FILES]
    write_text_atomic(paths[0], render_markdown(board))
    write_json_atomic(paths[1], board)
    png = render_png(board)
    written = paths[:2]
    if png is not None:
        write_bytes_atomic(paths[2], png)
        written.append(paths[2])
    write_text_atomic(paths[3], render_html(board, png))
    return [*written, paths[3]]
