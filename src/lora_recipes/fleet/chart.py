"""leaderboard.png: per task, grouped bars of the base model, the adapter and GPT-4 (LoRA Land's
number, where comparable), in the spirit of LoRA Land's chart. A missing score is a missing bar
(and "–" under its place)."""

from __future__ import annotations

import io
from typing import Any

SERIES = (("base", "base model", "#9e9e9e"), ("adapter", "+ LoRA adapter", "#1f77b4"), ("GPT-4", "GPT-4", "#ff7f0e"))


def render_png(board: dict[str, Any]) -> bytes | None:
    """The chart as PNG bytes, or None when matplotlib is not installed (the `train` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = board["tasks"]
    width = 0.8 / len(SERIES)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) + 2), 4.2), dpi=100)
    try:
        for i, (key, label, color) in enumerate(SERIES):
            xs, heights = [], []
            for x, task in enumerate(tasks):
                value = task["scores"].get(key)
                if value is not None:
                    xs.append(x + (i - 1) * width)
                    heights.append(value)
            bars = ax.bar(xs, heights, width, label=label, color=color)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
            for x, task in enumerate(tasks):
                if task["scores"].get(key) is None:
                    ax.text(x + (i - 1) * width, 0.01, "–", ha="center", va="bottom", fontsize=8, color=color)
        ax.set_xticks(
            range(len(tasks)),
            [t["name"] for t in tasks],
            rotation=30 if len(tasks) > 6 else 0,
            ha="right" if len(tasks) > 6 else "center",
        )
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("score (each task's own metric)")
        ax.set_title("Fleet leaderboard: base vs adapter vs GPT-4")
        from matplotlib.patches import Patch

        handles = [Patch(color=color, label=label) for _, label, color in SERIES]
        ax.legend(handles=handles, loc="upper left", fontsize=8, ncols=3)
        ax.spines[["top", "right"]].set_visible(False)
        if not tasks:
            ax.text(0.5, 0.5, "no tasks yet", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue()
    finally:
        plt.close(fig)
