"""Shared fixtures: the tiny in-process model, the shared task data, an isolated cache; and the
rule that keeps the test tiers honest (a test that builds or loads a model is marked slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SHARED_DATA = Path(os.environ.get("LORA_RECIPES_SHARED_DATA", ROOT.parent / "shared" / "data"))


# Fixtures that build or load a model: a test that asks for one belongs to the slow tier.
MODEL_FIXTURES = frozenset({"tiny_model_dir"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before any fixture is set up, a test whose markers put it in the wrong tier, so that
    `make test-fast` (-m "not slow") never builds a model and the gpu tier is always slow too."""
    marks = {mark.name for mark in item.iter_markers()}
    models = sorted(MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if models and "slow" not in marks:
        pytest.fail(f"{item.nodeid} uses {', '.join(models)} (builds or loads a model) but is not marked slow")
    if "gpu" in marks and "slow" not in marks:
        pytest.fail(f"{item.nodeid} is marked gpu but not slow")


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
