"""`lora-recipes fleet status DIR`: what fleet.json records, one line per recipe, and whether a
driver is running on the folder now."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from lora_recipes.errors import UserError
from lora_recipes.fleet.progress import clock, money, training_text
from lora_recipes.fleet.state import LOCK_FILE, QUEUED, RUNNING, STATE_FILE, FleetState, RecipeRecord


def driver_holder(runs: Path) -> str | None:
    """'process PID on HOST' of the driver holding the fleet, or None when none is alive here."""
    try:
        holder = json.loads((runs / LOCK_FILE).read_text(encoding="utf-8"))
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return f"process {pid} on {host}"


def load_state(runs: Path) -> FleetState:
    state = FleetState.load(runs)
    if state is None:
        raise UserError(
            f"{runs}: no {STATE_FILE} (not a fleet folder; start one with `lora-recipes fleet ... --runs {runs}`)"
        )
    return state


def _progress(r: RecipeRecord) -> str:
    if r.status == RUNNING:
        return "evaluating" if r.phase == "evaluating" else training_text(r).removeprefix("training ")
    if r.score is not None:
        return f"{r.metric} {r.score:.3f}" + (f" (base {r.base_score:.3f})" if r.base_score is not None else "")
    return ""


def render_status(state: FleetState, runs: Path) -> str:
    head = ("recipe", "status", "attempts", "progress / score", "time", "cost")
    rows = [head]
    holder = driver_holder(runs)
    for r in state.recipes.values():
        status = r.status
        if holder is None and status in (RUNNING, QUEUED):  # its driver is gone (killed)
            status = "interrupted"
        rows.append(
            (
                r.name,
                status,
                str(r.attempts),
                _progress(r),
                clock(r.train_seconds + r.evaluate_seconds) if r.attempts else "",
                money(r.cost_usd) if r.cost_usd is not None else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    errors = [r for r in state.recipes.values() if r.last_error and r.status != "finished"]
    if errors:
        lines.append("")
        lines.extend(f"{r.name}: {r.last_error}" for r in errors)
    lines.append("")
    counts: dict[str, int] = {}
    for r in state.recipes.values():
        counts[r.status] = counts.get(r.status, 0) + 1
    spent = sum(r.cost_usd or 0.0 for r in state.recipes.values())
    lines.append(
        f"{len(state.recipes)} recipes: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {money(spent)} spent"
    )
    last = state.sessions[-1] if state.sessions else {}
    if holder:
        lines.append(f"driver: running ({holder}), started {last.get('started', '?')} on {last.get('backend', '?')}")
    else:
        ended = last.get("ended")
        how = "stopped" if last.get("stopped") else "ended"
        lines.append(f"driver: not running (last run {how} {ended})" if ended else "driver: not running")
    lines.append(f"updated {state.updated}; fleet wall time {clock(state.wall_seconds())}")
    return "\n".join(lines) + "\n"
