"""Shared fixtures: the tiny in-process model, the shared task data, an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SHARED_DATA = Path(os.environ.get("LORA_RECIPES_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tokenized data and converted models go to a per-session folder unless the caller chose one
    (set LORA_RECIPES_CACHE to reuse a converted SmolLM2 between runs)."""
    if "LORA_RECIPES_CACHE" not in os.environ:
        os.environ["LORA_RECIPES_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Mistral with a byte-level BPE tokenizer, built once per session."""
    from lora_recipes.model.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-mistral"))


def shared_task_data(task: str) -> Path:
    """../shared/data/<task>, or skip the test when it is not there."""
    folder = SHARED_DATA / task
    if not folder.is_dir():
        pytest.skip(f"{folder} is not available")
    return folder
