"""What a run cost: device time, dollars, tokens, memory, and the plan's estimate beside them.

Accounting rules (the report states them too):
- `wall_seconds` is the run's wall time from start to finish (model loading, data preparation,
  validation and checkpoints included), summed over resumed sessions up to each one's last
  checkpoint; steps lost to a crash after a checkpoint are not counted.
- `gpu_hours` = wall_seconds x processes / 3600 (one device per process).
- Price per device-hour: `cost.price_per_hour_usd` when set; on a GPU, else the built-in price of
  the GPU the run is on (estimate.GPUS, matched by its name; a MIG slice costs its share of the
  whole GPU's price, see estimate.py), else of `cost.gpu`. A CPU has no price in the table: it is
  0 unless `cost.price_per_hour_usd` gives one.
- `tokens_trained` counts real (non-padding) tokens; `tokens_per_second` = tokens_trained /
  wall_seconds.
- Peak memory on a GPU is recorded twice: `peak_memory_bytes`, what tensors held at most
  (torch.cuda.max_memory_allocated, what the estimate models), and `peak_memory_reserved_bytes`,
  what the caching allocator held from the driver (torch.cuda.max_memory_reserved: what runs out
  on a small card, fragmentation included). On a CPU: the process's peak RSS, and no reserved peak.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

from lora_recipes.planning.estimate import Estimate, UnknownEstimate, gpu_spec, match_gpu
from lora_recipes.recipe.types import Cost


@dataclass(frozen=True)
class Price:
    per_hour_usd: float
    gpu: str | None  # the table entry used, if any
    note: str


def device_price(device_type: str, device_name: str, cost: Cost) -> Price:
    """The price of one device-hour of this run (see the module notes)."""
    if device_type != "cuda":
        if cost.price_per_hour_usd is not None:
            return Price(cost.price_per_hour_usd, None, "CPU run, priced at cost.price_per_hour_usd")
        return Price(0.0, None, "CPU run: no GPU price applies (set cost.price_per_hour_usd to price the machine)")
    if cost.price_per_hour_usd is not None:
        return Price(cost.price_per_hour_usd, match_gpu(device_name), "cost.price_per_hour_usd")
    matched = match_gpu(device_name)
    if matched is not None:
        whole, _, mig = matched.partition(" MIG ")
        what = f"MIG slice {mig}'s share of the built-in on-demand price of {whole}" if mig else ""
        note = what or f"built-in on-demand price of {matched}"
        return Price(gpu_spec(matched).price_per_hour_usd, matched, note)
    return Price(
        gpu_spec(cost.gpu).price_per_hour_usd,
        cost.gpu,
        f"{device_name} is not in the built-in table; priced as cost.gpu ({cost.gpu})",
    )


def device_name(device_type: str) -> str:
    if device_type == "cuda":
        import torch

        return str(torch.cuda.get_device_name())
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@dataclass(frozen=True)
class PeakMemory:
    """A run's peak memory (see the module notes)."""

    allocated: int  # CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak RSS
    reserved: int | None = None  # CUDA: torch.cuda.max_memory_reserved; None on a CPU


def peak_memory_bytes(device_type: str) -> int:
    """CUDA: the allocator's peak; CPU: this process's peak resident set size."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def peak_memory_reserved_bytes(device_type: str) -> int | None:
    """CUDA: the caching allocator's peak reservation; None on a CPU."""
    if device_type != "cuda":
        return None
    import torch

    return int(torch.cuda.max_memory_reserved())


def peak_memory(device_type: str) -> PeakMemory:
    return PeakMemory(peak_memory_bytes(device_type), peak_memory_reserved_bytes(device_type))


def _error_percent(actual: float, estimated: float | None) -> float | None:
    if estimated is None or estimated == 0:
        return None
    return round(100 * (actual - estimated) / estimated, 1)


def cost_report(
    *,
    device_type: str,
    name: str,
    processes: int,
    price: Price,
    wall_seconds: float,
    train_seconds: float,
    tokens_trained: int,
    tokens_computed: int,
    peak_memory: int | PeakMemory,
    total_params: int,
    trainable_params: int,
    steps: int,
    estimate: Estimate | UnknownEstimate | None,
) -> dict[str, Any]:
    gpu_hours = wall_seconds * processes / 3600
    peak = peak_memory if isinstance(peak_memory, PeakMemory) else PeakMemory(peak_memory)
    compute_rate = tokens_computed / (train_seconds * processes) if train_seconds else 0.0
    report: dict[str, Any] = {
        "device": device_type,
        "device_name": name,
        "gpu": price.gpu,
        "processes": processes,
        "wall_seconds": wall_seconds,
        "train_seconds": train_seconds,
        "gpu_hours": gpu_hours,
        "price_per_hour_usd": price.per_hour_usd,
        "price_note": price.note,
        "total_cost_usd": gpu_hours * price.per_hour_usd,
        "steps": steps,
        "tokens_trained": tokens_trained,
        "tokens_computed": tokens_computed,
        "padding_share": 1 - tokens_trained / tokens_computed if tokens_computed else 0.0,
        "tokens_per_second": tokens_trained / wall_seconds if wall_seconds else 0.0,
        "computed_tokens_per_device_second_training": compute_rate,
        "peak_memory_bytes": peak.allocated,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device_type == "cuda" else "process peak RSS",
        "peak_memory_reserved_bytes": peak.reserved,
        "total_params": total_params,
        "trainable_params": trainable_params,
        "estimate": None,
    }
    report["estimate"] = estimate_beside_actual(report, estimate)
    return report


def estimate_beside_actual(
    report: dict[str, Any], estimate: Estimate | UnknownEstimate | None
) -> dict[str, Any] | None:
    """The plan's estimate beside what the run measured (`report`), with the error of each, when
    the estimate is for the device the run used; otherwise no rows, and a note that says what the
    plan estimated for which GPU and why it is not compared (a CPU run, or a GPU the built-in
    table does not have: training.run_plan re-estimates for every GPU it has)."""
    if estimate is None:
        return None
    if isinstance(estimate, UnknownEstimate):
        return {"gpu": estimate.gpu, "note": estimate.reason, "rows": {}}
    planned = f"estimated for {estimate.gpu}: {_duration(estimate.hours)}, {_money(estimate.cost_usd)}"
    if report["device"] != "cuda":
        why = "this run was on the CPU, which the plan does not estimate, so nothing is compared"
        return {"gpu": estimate.gpu, "note": f"{planned}; {why}", "rows": {}}
    used = match_gpu(report["device_name"])
    if used != estimate.gpu:
        why = f"this run was on {report['device_name']}, which the built-in table does not have, so nothing is compared"
        return {"gpu": estimate.gpu, "note": f"{planned}; {why}", "rows": {}}
    pairs = {
        "gpu_hours": (report["gpu_hours"], estimate.hours),
        "total_cost_usd": (report["total_cost_usd"], estimate.cost_usd),
        "tokens_per_second": (report["computed_tokens_per_device_second_training"], estimate.tokens_per_second),
        "peak_memory_bytes": (report["peak_memory_bytes"], estimate.peak_memory_bytes),
    }
    if report.get("peak_memory_reserved_bytes") is not None:
        pairs["peak_memory_reserved_bytes"] = (report["peak_memory_reserved_bytes"], estimate.peak_memory_bytes)
    note = f"estimated for {estimate.gpu}, the GPU this run was on"
    rows = {
        key: {"estimate": est, "actual": actual, "error_percent": _error_percent(actual, est)}
        for key, (actual, est) in pairs.items()
    }
    return {"gpu": estimate.gpu, "note": note, "rows": rows}


def _peak_text(report: dict[str, Any]) -> str:
    gib = 2**30
    allocated = f"{report['peak_memory_bytes'] / gib:.2f} GiB"
    reserved = report.get("peak_memory_reserved_bytes")
    if reserved is None:
        return f"{allocated} ({report['peak_memory_kind']})"
    return f"{allocated} allocated, {reserved / gib:.2f} GiB reserved (max_memory_allocated, max_memory_reserved)"


def _duration(hours: float) -> str:
    """GPU time in the largest unit that keeps it above 1 (hours, minutes, seconds)."""
    if hours >= 1:
        return f"{hours:,.2f} GPU-hours"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} GPU-minutes"
    return f"{hours * 3600:.1f} GPU-seconds"


def _money(x: float) -> str:
    return f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def summary_line(report: dict[str, Any]) -> str:
    """One line for the end of `train`."""
    where = report["gpu"] or report["device"]
    return (
        f"cost {_money(report['total_cost_usd'])} ({report['gpu_hours']:.4f} device-hours on {where} at "
        f"{_money(report['price_per_hour_usd'])}/h), {report['tokens_trained']:,} tokens at "
        f"{report['tokens_per_second']:,.0f} tokens/s, peak memory {report['peak_memory_bytes'] / 2**30:.2f} GiB"
    )


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Cost report",
        "",
        "| | |",
        "|---|---|",
        f"| device | {report['device']} ({report['device_name']}) x {report['processes']} |",
        f"| wall time | {report['wall_seconds']:,.1f} s ({report['train_seconds']:,.1f} s in training steps) |",
        f"| device-hours | {report['gpu_hours']:.4f} |",
        f"| price per hour | {_money(report['price_per_hour_usd'])} ({report['price_note']}) |",
        f"| total cost | {_money(report['total_cost_usd'])} |",
        f"| optimizer steps | {report['steps']:,} |",
        f"| tokens trained | {report['tokens_trained']:,} real, {report['tokens_computed']:,} computed "
        f"({100 * report['padding_share']:.1f}% padding) |",
        f"| tokens/s | {report['tokens_per_second']:,.1f} (real tokens over wall time) |",
        f"| peak memory | {_peak_text(report)} |",
        f"| parameters | {report['total_params']:,} total, {report['trainable_params']:,} trainable |",
    ]
    est = report["estimate"]
    if est is not None:
        note = str(est["note"])
        lines += ["", "## Plan's estimate", "", note[:1].upper() + note[1:] + ".", ""]
        if est["rows"]:
            lines += ["| | estimate | actual | error |", "|---|---|---|---|"]
            for key, row in est["rows"].items():
                err = "n/a" if row["error_percent"] is None else f"{row['error_percent']:+.1f}%"
                lines.append(f"| {key} | {row['estimate']:,.4g} | {row['actual']:,.4g} | {err} |")
    lines += [
        "",
        "device-hours = wall time x processes / 3600; cost = device-hours x price; tokens/s = real tokens / wall time.",
        "The estimate's tokens/s is computed tokens (padding included) per device-second of training steps.",
    ]
    return "\n".join(lines) + "\n"
