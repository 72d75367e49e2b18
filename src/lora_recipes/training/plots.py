"""loss.png: training loss per optimizer step and validation loss per validation."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lora_recipes.atomic import write_bytes_atomic


def plot_losses(records: Iterable[dict[str, Any]], path: Path, title: str) -> None:
    """Draw the losses found in metrics records (`loss` of train steps, `validation_loss` of
    validations) and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("event") == "train"]
    validation = [(r["step"], r["validation_loss"]) for r in records if r.get("event") == "validation"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
        if validation:
            ax.plot(*zip(*validation, strict=True), label="validation", marker="o", linewidth=1.5)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (mean per answer token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if train or validation:
            ax.legend()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
