"""Shared pieces of the training tests (no tests here): the tiny sentiment recipe, rows of
long-tailed length generated on the spot, and a helper that trains in-process."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from lora_recipes.recipe.loader import LoadedRecipe, load_recipe
from lora_recipes.training.train import TrainOptions, TrainResult, train

RECIPE = Path(__file__).parent / "fixtures" / "train" / "tiny_sentiment.yaml"
WORDS = ("the", "movie", "was", "great", "and", "acting", "wonderful", "a", "dull", "lifeless", "film")
WORDS += ("with", "no", "wit", "at", "all", "charming", "journey", "boring", "far", "too", "long")


def write_reviews(path: Path, rows: int = 120, seed: int = 0) -> Path:
    """Reviews from 1 to 60 words (most short, a few long), labels at random."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            n = min(int(rng.paretovariate(1.2) * 3), 60)
            text = " ".join(rng.choice(WORDS) for _ in range(n))
            f.write(json.dumps({"text": text, "label": rng.choice(["negative", "positive"])}) + "\n")
    return path


def recipe_args(model_dir: Path, *sets: str) -> list[str]:
    return [f"base_model={model_dir}", *sets]


def load(model_dir: Path, data: Path, *sets: str) -> LoadedRecipe:
    return load_recipe(RECIPE, recipe_args(model_dir, *sets), str(data))


def train_tiny(model_dir: Path, data: Path, run_dir: Path, *sets: str, **options: Any) -> TrainResult:
    """Train the tiny recipe in this process; progress goes to a buffer, not the test's stderr."""
    return train(load(model_dir, data, *sets), TrainOptions(run_dir=run_dir, stream=io.StringIO(), **options))


def metrics(run_dir: Path, event: str = "train") -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def adapter_tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch

    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
