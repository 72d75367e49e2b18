"""The command line through typer's CliRunner: exit codes, messages, JSON shapes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lora_recipes import __version__
from lora_recipes.cli import app

ROOT = Path(__file__).resolve().parents[1]
JIGSAW = str(ROOT / "recipes" / "jigsaw.yaml")
FIVE_MISTAKES = """\
version: 1
base_model: mistralai/Mistral-7B-v0.1
quantization: {bits: 3}
prompt: {template: "Comment: {comment_text.__class__}"}
output: {column: toxic, type: category}
data: {dataset: ./data, evaluation_split: dev}
trainer: {learning_rat: 1e-4}
"""

runner = CliRunner()


def test_validate_shipped_recipe_exits_zero() -> None:
    result = runner.invoke(app, ["validate", JIGSAW])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 recipe valid"


def test_validate_reports_five_mistakes_with_positions(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(FIVE_MISTAKES)
    result = runner.invoke(app, ["validate", str(bad), JIGSAW])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[:-1] == [
        f"{bad}:3:22: quantization.bits: 3 is not one of 4, 8 or null",
        f"{bad}:4:20: prompt.template: {{comment_text.__class__}}: attribute access is not allowed (at character 10)"
        " (placeholders are plain column names)",
        f"{bad}:5:1: output: a category output needs its labels (add output.labels: [label, ...])",
        f"{bad}:6:43: data.evaluation_split: 'dev' is not one of train, validation, test",
        f"{bad}:7:11: trainer.learning_rat: unknown key (did you mean learning_rate?)",
    ]
    assert lines[-1] == "1 of 2 recipes invalid (5 errors)"
    assert "Traceback" not in result.output


def test_validate_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(FIVE_MISTAKES)
    result = runner.invoke(app, ["validate", "--format", "json", str(bad), JIGSAW])
    assert result.exit_code == 2
    report = json.loads(result.output)
    assert (report["valid"], report["invalid"], report["errors"]) == (1, 1, 5)
    first = report["files"][0]["errors"][0]
    assert first == {"file": str(bad), "line": 3, "col": 22, "path": "quantization.bits",
                     "message": "3 is not one of 4, 8 or null", "hint": None}  # fmt: skip


def test_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: no such file" in result.output


def test_plan_no_data_json() -> None:
    result = runner.invoke(app, ["plan", JIGSAW, "--no-data", "--format", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    # Mistral-7B, r=8 on q_proj (4096x4096) and v_proj (4096x1024), 32 layers.
    assert plan["lora_trainable_params"] == 3_407_872
    assert plan["effective_batch_size"] == 16
    assert plan["recipe"]["trainer"]["learning_rate"] == 0.0002
    estimate = plan["estimate"]
    assert estimate["gpu"] == "A10G"
    assert estimate["hours"] > 0 and estimate["cost_usd"] == estimate["hours"] * estimate["price_per_hour_usd"]


def test_plan_applies_overrides() -> None:
    result = runner.invoke(
        app,
        ["plan", JIGSAW, "--no-data", "--format", "json", "--set", "adapter.r=16", "--set", "cost.gpu=H100",
         "--set", "cost.price_per_hour_usd=2.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["lora_trainable_params"] == 2 * 3_407_872
    assert plan["estimate"]["gpu"] == "H100" and plan["estimate"]["price_per_hour_usd"] == 2.5


def test_plan_bad_override_exits_two_without_traceback() -> None:
    result = runner.invoke(app, ["plan", JIGSAW, "--no-data", "--set", "trainer.learning_rat=1"])
    assert result.exit_code == 2
    assert "--set:1:1: trainer.learning_rat: unknown key (did you mean learning_rate?)" in result.output
    assert "Traceback" not in result.output


def test_plan_text_shows_resolved_recipe_and_estimate() -> None:
    result = runner.invoke(app, ["plan", JIGSAW, "--no-data"])
    assert result.exit_code == 0, result.output
    assert "bnb_4bit_quant_type: nf4" in result.output
    assert "trainable params    3,407,872" in result.output
    assert "## estimate on A10G" in result.output


def test_schema_command_prints_the_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "lora-recipes recipe"


def test_version_and_help() -> None:
    assert runner.invoke(app, ["--version"]).output.strip() == f"lora-recipes {__version__}"
    help_text = runner.invoke(app, ["--help"]).output
    for command in ("validate", "plan", "schema"):
        assert command in help_text
    assert "Example: lora-recipes validate recipes/*.yaml" in runner.invoke(app, ["validate", "--help"]).output
