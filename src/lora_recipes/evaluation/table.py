"""The comparison table of an evaluation, rendered from its eval.json content: every system's score
beside LoRA Land's published numbers for the recipe's reference task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(result: Mapping[str, Any]) -> str:
    """Markdown: a heading, one row per system, LoRA Land's rows, and notes on failures and on
    whether LoRA Land's numbers measure the same thing."""
    metric = result["metric"]
    data = result["data"]
    lines = [
        f"## {result['name']}: {metric} on {result['n']} examples",
        "",
        f"Split {data['split']}, subset hash {data['subset_hash'].split(':')[-1][:12]}, mode {result['mode']}.",
        "",
        f"| system | {metric} | unparseable | failures | examples/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, system in result["systems"].items():
        lines.append(
            f"| {name}: {system['description']} | {_score(result['scores'][name][metric])} | "
            f"{system['unparseable']} | {system['failures']} | {_rate(system['examples_per_second'])} |"
        )
    reference = result.get("reference")
    if reference:
        for label, value in reference["rows"]:
            lines.append(f"| {label} | {_score(value)} | | | |")
    notes = []
    for name, system in result["systems"].items():
        if system["failures"]:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in system["errors"].items())
            if system["failures"] >= result["n"]:
                notes.append(f"{name}: all {result['n']} requests failed, so it has no score ({kinds}).")
            else:
                notes.append(f"{name}: {system['failures']} of {result['n']} requests failed and score 0 ({kinds}).")
        if system["unparseable"]:
            notes.append(f"{name}: {system['unparseable']} outputs could not be read as an answer and score 0.")
    if reference:
        if reference["comparable"]:
            notes.append(
                f"LoRA Land rows: published scores for {reference['task']} ({reference['metric']}), "
                "7B-class models on LoRA Land's own test subset."
            )
        else:
            notes.append(
                f"LoRA Land scored {reference['task']} with {reference['metric']}; this table's {metric} "
                "scores are not comparable with its numbers."
            )
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"
