"""`lora-recipes plan` with data: the data section, measured steps and estimate, the offline
approximation, `--no-data` unchanged, and a data report without splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_helpers import sentiment_folder, sentiment_recipe, write_recipe
from lora_recipes.cli import app
from lora_recipes.data import hub
from lora_recipes.data.pipeline import plan_data
from lora_recipes.planning.plan import Counts, build_plan
from lora_recipes.planning.render import render_plan_text
from lora_recipes.recipe.loader import load_recipe

runner = CliRunner()


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    sentiment_folder(tmp_path, train=48, validation=6, test=5)
    return write_recipe(tmp_path, sentiment_recipe())


def plan_json(*args: str) -> dict:
    result = runner.invoke(app, ["plan", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "sets",
    [(), ("prompt.retrieval.k=2",), ("preprocessing.global_max_sequence_length=30",)],
    ids=["p95", "retrieval", "fixed-length"],
)
def test_the_plan_data_section_is_the_data_report(
    recipe_path: Path, tiny_model_dir: Path, sets: tuple[str, ...]
) -> None:
    """The typed plan reads the report and writes it back key for key, in the report's order."""
    loaded = load_recipe(recipe_path, [f"base_model={tiny_model_dir}", *sets])
    report = plan_data(loaded)
    plan = build_plan(loaded, data=report)
    doc = plan.to_json()
    keys = ("data", "splits", "tokens", "max_length_setting", "truncated_rows", "dropped_rows", "skipped_rows",
            "split_hashes")  # fmt: skip
    assert json.dumps({k: doc[k] for k in keys}) == json.dumps({k: report[k] for k in keys})
    assert list(doc)[-len(keys) - 2 :] == [*keys, "tokens_to_train", "target_tokens_to_train"]
    assert doc["max_length"] == report["max_length"] and list(plan.warnings) == report["warnings"]
    assert render_plan_text(plan, "")  # every data shape renders


def test_a_data_report_without_splits_plans_from_the_counts_alone(recipe_path: Path) -> None:
    """Synthetic data (scripts/bench_gpu.py) comes with an empty report: the counts given are the
    plan's, and it has no data section."""
    loaded = load_recipe(recipe_path)
    counts = Counts(train_rows=100, validation_rows=0, train_tokens_per_epoch=10_000, validation_tokens=0,
                    max_length=128, basis="synthetic rows")  # fmt: skip
    plan = build_plan(loaded, data={}, measured=counts)
    doc = plan.to_json()
    assert plan.data is None and "splits" not in doc and "data" not in doc
    # 100 rows, batch 1 x 16 accumulation: 7 steps per epoch, 3 epochs; 336 rows of 100 tokens each.
    assert doc["steps"] == {"per_epoch": 7, "total": 21, "epochs": 3.0, "validations": 0}
    assert doc["max_length"] == 128
    assert doc["estimate"]["basis"] == "synthetic rows" and doc["estimate"]["train_tokens"] == 33_600
    assert "## data" not in render_plan_text(plan, "")
    # Without counts, an empty report is no data: the recipe's expectations, as with --no-data.
    assert build_plan(loaded, data={}).to_json() == build_plan(loaded).to_json()
