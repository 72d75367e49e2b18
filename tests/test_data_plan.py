"""`lora-recipes plan` with data: the data section, measured steps and estimate, the offline
approximation, and `--no-data` unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_helpers import sentiment_folder, sentiment_recipe, write_recipe
from lora_recipes.cli import app
from lora_recipes.data import hub

runner = CliRunner()


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    sentiment_folder(tmp_path, train=48, validation=6, test=5)
    return write_recipe(tmp_path, sentiment_recipe())


def plan_json(*args: str) -> dict:
    result = runner.invoke(app, ["plan", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_plan_with_data_reports_rows_tokens_cut_off_steps_and_cost(recipe_path: Path, tiny_model_dir: Path) -> None:
    plan = plan_json(str(recipe_path), "--set", f"base_model={tiny_model_dir}", "--set", "trainer.epochs=2")
    assert {n: s["rows"] for n, s in plan["splits"].items()} == {"train": 48, "validation": 6, "test": 5}
    assert plan["splits"]["test"]["used"] is False
    assert plan["data"]["tokenizer"] == {"name": str(tiny_model_dir), "approximate": False}
    total = plan["tokens"]["total"]
    assert total["min"] <= total["p50"] <= total["p95"] <= total["p99"] <= total["max"]
    assert plan["max_length"] == total["p95"] and plan["max_length_setting"] == "p95"
    train = plan["splits"]["train"]
    assert plan["truncated_rows"] == train["truncated_rows"] + plan["splits"]["validation"]["truncated_rows"]
    assert plan["dropped_rows"] == 0 and train["examples"] == 48
    # 48 rows, batch 1 x 16 accumulation: 3 steps per epoch.
    assert plan["steps"] == {"per_epoch": 3, "total": 6, "epochs": 2.0, "validations": 0}
    assert plan["tokens_to_train"] == 2 * train["tokens"]
    assert plan["estimate"]["hours"] > 0 and plan["estimate"]["cost_usd"] > 0
    assert plan["estimate"]["basis"].startswith("measured: 48 training rows")
    assert set(plan["split_hashes"]) == {"train", "validation", "test"}


def test_plan_text_shows_the_data_section(recipe_path: Path, tiny_model_dir: Path) -> None:
    result = runner.invoke(app, ["plan", str(recipe_path), "--set", f"base_model={tiny_model_dir}"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "## data" in text and "tokens (train)" in text
    assert "max length" in text and "p95 of the training rows' prompt+answer lengths" in text
    assert "(not used by this recipe)" in text  # the test split, with validation as evaluation split


def test_plan_without_the_tokenizer_says_counts_are_approximate(
    recipe_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "unreachable_reason", lambda: "https://huggingface.co did not answer")
    monkeypatch.setattr(hub, "cached_snapshot", lambda *args: None)
    plan = plan_json(str(recipe_path))
    tokenizer = plan["data"]["tokenizer"]
    assert tokenizer["approximate"] is True and tokenizer["stands_in_for"] == "mistralai/Mistral-7B-v0.1"
    assert "APPROXIMATE" in tokenizer["note"] and "cannot be reached" in tokenizer["note"]
    assert "APPROXIMATE" in plan["estimate"]["basis"]
    assert plan["max_length"] == plan["tokens"]["total"]["p95"] > 0
    text = runner.invoke(app, ["plan", str(recipe_path)]).output
    assert "token counts are APPROXIMATE" in text


def test_plan_no_data_reads_nothing(recipe_path: Path) -> None:
    (recipe_path.parent / "data" / "train.jsonl").write_bytes(b"\xff not even text")
    plan = plan_json(str(recipe_path), "--no-data")
    assert "splits" not in plan and plan["steps"] is None
    result = runner.invoke(app, ["plan", str(recipe_path), "--no-data", "--data", "elsewhere"])
    assert result.exit_code == 2 and "use one of them" in result.output
