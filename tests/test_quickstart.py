"""The quickstart: its shipped data is what the generator writes, and the recipe runs the whole
path (plan with data, train, evaluate) — here on the tiny model, so the check takes seconds; `make
demo` runs it on SmolLM2-135M."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_recipes.cli import app

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
runner = CliRunner()


def test_shipped_data_is_what_the_generator_writes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_quickstart_data.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_splits_are_disjoint_and_answers_are_json() -> None:
    seen: dict[str, str] = {}
    for split in ("train", "validation", "test"):
        for line in (ROOT / "recipes" / "data" / "quickstart" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert seen.setdefault(row["text"], split) == split, f"{row['text']!r} is in two splits"
            order = json.loads(row["order"])
            assert list(order) == ["item", "quantity", "size", "color", "city"]
            assert order["city"] in row["text"] and 1 <= order["quantity"] <= 12


@pytest.mark.slow
def test_plan_reads_the_shipped_data(tiny_model_dir: Path) -> None:
    result = runner.invoke(app, ["plan", str(QUICKSTART), "--format", "json", "--set", f"base_model={tiny_model_dir}"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert {name: s["rows"] for name, s in plan["splits"].items()} == {"train": 2000, "validation": 200, "test": 200}
    assert plan["steps"]["total"] == 60
    assert plan["dropped_rows"] == 0


@pytest.mark.slow
def test_train_then_evaluate_base_and_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    sets = ["--set", f"base_model={tiny_model_dir}", "--set", "trainer.train_steps=3", "--set", "trainer.eval_steps=3"]
    run_dir = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(QUICKSTART), "--run-dir", str(run_dir), *sets])
    assert trained.exit_code == 0, trained.output
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    evaluated = runner.invoke(
        app,
        ["evaluate", str(QUICKSTART), "--adapter", str(run_dir), "--base", "--limit", "4", "--format", "json",
         "--set", f"base_model={tiny_model_dir}", "--set", "generation.max_new_tokens=8"],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.stdout)
    assert result["n"] == 4 and set(result["scores"]) == {"base", "adapter"}
    assert all(0.0 <= s["exact_match"] <= 1.0 for s in result["scores"].values())
