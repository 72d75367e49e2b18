"""The fleet plan: `lora-recipes plan A.yaml B.yaml ...` prints one row per recipe (rows, steps,
GPU-hours, cost, peak memory, whether it fits) and the fleet's totals, from each recipe's own plan
(`planning.plan.build_plan`). A recipe that is invalid, or whose data cannot be read, is a row
with its errors; the others are planned all the same.

With `--no-data` nothing heavy is imported (the same promise as `plan --no-data`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.errors import LoraRecipesError, UserError
from lora_recipes.fleet.recipes import DataOptions, FleetRecipe, load_fleet

GIB = 2**30
LORA_LAND_NOTE = "LoRA Land: under $8 of GPU per adapter on average"


@dataclass(frozen=True)
class PlanRow:
    file: str
    name: str
    data: str | None  # the data planned with (None: the recipe's own, or none with --no-data)
    errors: tuple[str, ...]
    plan: dict[str, Any] | None  # Plan.to_json(); None when invalid

    @property
    def planned(self) -> bool:
        return self.plan is not None

    def _estimate(self, key: str) -> Any:
        return (self.plan or {}).get("estimate", {}).get(key)

    @property
    def rows(self) -> int | None:
        plan = self.plan or {}
        train = plan.get("splits", {}).get("train")
        if train is not None:
            return int(train.get("examples", train["rows"]))
        expected = plan.get("recipe", {}).get("data", {}).get("expected_rows", {}).get("train")
        return int(expected) if expected is not None else None

    @property
    def steps(self) -> int | None:
        steps = (self.plan or {}).get("steps")
        return int(steps["total"]) if steps else None

    @property
    def hours(self) -> float | None:
        return self._estimate("hours")

    @property
    def cost_usd(self) -> float | None:
        return self._estimate("cost_usd")

    @property
    def peak_memory_bytes(self) -> int | None:
        return self._estimate("peak_memory_bytes")

    @property
    def fits(self) -> bool | None:
        return self._estimate("fits_in_memory")

    @property
    def gpu(self) -> str | None:
        return self._estimate("gpu")

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "name": self.name,
            "valid": self.planned,
            "errors": list(self.errors),
            "data": self.data,
            "rows": self.rows,
            "steps": self.steps,
            "gpu": self.gpu,
            "gpu_hours": self.hours,
            "cost_usd": self.cost_usd,
            "peak_memory_bytes": self.peak_memory_bytes,
            "fits": self.fits,
            "plan": self.plan,
        }


@dataclass(frozen=True)
class FleetPlan:
    rows: tuple[PlanRow, ...]

    @property
    def invalid(self) -> list[PlanRow]:
        return [r for r in self.rows if not r.planned]

    def totals(self) -> dict[str, Any]:
        planned = [r for r in self.rows if r.planned]
        costs = [r.cost_usd for r in planned if r.cost_usd is not None]
        hours = [r.hours for r in planned if r.hours is not None]
        peaks = [r.peak_memory_bytes for r in planned if r.peak_memory_bytes is not None]
        return {
            "recipes": len(self.rows),
            "planned": len(planned),
            "invalid": len(self.invalid),
            "estimated": len(costs),
            "gpu_hours": sum(hours),
            "cost_usd": sum(costs),
            "mean_cost_usd": statistics.fmean(costs) if costs else None,
            "median_cost_usd": statistics.median(costs) if costs else None,
            "steps": sum(r.steps or 0 for r in planned),
            "max_peak_memory_bytes": max(peaks) if peaks else None,
            "all_fit": all(r.fits for r in planned if r.fits is not None),
            "gpus": sorted({r.gpu for r in planned if r.gpu}),
        }

    def to_json(self) -> dict[str, Any]:
        return {"recipes": [r.to_json() for r in self.rows], "totals": self.totals()}


def plan_fleet(recipes: Sequence[FleetRecipe], *, with_data: bool) -> FleetPlan:
    """Each recipe's plan (reading its data unless `with_data` is False); a failure is its row's
    errors, never the fleet's."""
    from lora_recipes.planning.plan import build_plan

    rows = []
    for r in recipes:
        if r.loaded is None:
            rows.append(PlanRow(str(r.file), r.name, r.data.path, r.errors, None))
            continue
        try:
            if with_data:
                from lora_recipes.data.pipeline import plan_data

                plan = build_plan(r.loaded, data=plan_data(r.loaded))
            else:
                plan = build_plan(r.loaded)
        except LoraRecipesError as exc:
            rows.append(PlanRow(str(r.file), r.name, r.data.path, (f"{r.file}: {exc}",), None))
            continue
        rows.append(PlanRow(str(r.file), r.name, r.data.path, (), plan.to_json()))
    return FleetPlan(tuple(rows))


def _num(value: float | int | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:,.2f}"


def _gib(value: int | None) -> str:
    return "–" if value is None else f"{value / GIB:.1f} GiB"


def render_text(fleet: FleetPlan) -> str:
    """Aligned columns, one row per recipe, then the totals and every invalid recipe's errors."""
    head = ("recipe", "rows", "steps", "GPU-hours", "cost", "peak memory", "fits")
    table = [head]
    for r in fleet.rows:
        if not r.planned:
            table.append((r.name, "invalid", "", "", "", "", ""))
            continue
        fits = "–" if r.fits is None else ("yes" if r.fits else "NO")
        table.append(
            (
                r.name,
                _num(r.rows, ","),
                _num(r.steps, ","),
                _num(r.hours, ",.3f"),
                _money(r.cost_usd),
                _gib(r.peak_memory_bytes),
                f"{fits} ({r.gpu})" if r.gpu else fits,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    t = fleet.totals()
    lines.append("")
    noun = "recipe" if t["recipes"] == 1 else "recipes"
    summary = f"{t['recipes']} {noun}: {t['planned']} planned"
    if t["invalid"]:
        summary += f", {t['invalid']} invalid"
    lines.append(summary)
    if t["estimated"]:
        lines.append(
            f"total: {t['gpu_hours']:,.2f} GPU-hours, {_money(t['cost_usd'])} on {', '.join(t['gpus'])}; per adapter "
            f"mean {_money(t['mean_cost_usd'])}, median {_money(t['median_cost_usd'])} ({LORA_LAND_NOTE})"
        )
        lines.append(
            f"largest peak memory {_gib(t['max_peak_memory_bytes'])}; "
            + ("every recipe fits its GPU" if t["all_fit"] else "some recipes do NOT fit their GPU (see fits)")
        )
    unknown = t["planned"] - t["estimated"]
    if unknown:
        lines.append(f"{unknown} planned recipe{'s' if unknown != 1 else ''} without an estimate (see `plan RECIPE`)")
    for r in fleet.invalid:
        lines.append("")
        lines.append(f"{r.file}: invalid")
        lines.extend(f"  {e}" for e in r.errors)
    return "\n".join(lines) + "\n"


def fleet_plan_command(
    files: Sequence[Path],
    overrides: Sequence[str],
    *,
    data: str | None,
    data_root: Path | None,
    no_data: bool,
    as_json: bool,
) -> tuple[str, int]:
    """What `plan` prints for several recipes (or with --data-root), and its exit code: 2 when any
    recipe is invalid or its data unreadable, else 0."""
    import json

    if data is not None:
        raise UserError(
            "--data PATH is one recipe's data: plan several recipes with --data-root DIR (each recipe's folder "
            "inside it), or plan them one at a time"
        )
    if no_data and data_root is not None:
        raise UserError("--data-root reads data and --no-data does not: use one of them")
    recipes = load_fleet(files, overrides, DataOptions(root=data_root))
    fleet = plan_fleet(recipes, with_data=not no_data)
    text = json.dumps(fleet.to_json(), indent=2, default=str) + "\n" if as_json else render_text(fleet)
    return text, 2 if fleet.invalid else 0
