"""Acceptance on the shared task data (skipped when ../shared/data is absent): row counts and label
or entity distributions as each SOURCE.md states them."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import shared_task_data
from lora_recipes.cli import app
from lora_recipes.data.pipeline import compile_data, evaluation_examples
from lora_recipes.recipe.loader import load_recipe

pytestmark = pytest.mark.shared_data
FIXTURES = Path(__file__).parent / "fixtures" / "data"
runner = CliRunner()


def source_rows(folder: Path) -> dict[str, int]:
    """The `rows` column of SOURCE.md's split table."""
    text = (folder / "SOURCE.md").read_text(encoding="utf-8")
    return {
        m["split"]: int(m["rows"])
        for m in re.finditer(r"^\| (?P<split>\w+) \| `[^`]+` \| (?P<rows>\d+) \|", text, re.M)
    }


def source_distribution(folder: Path, split: str) -> dict:
    text = (folder / "SOURCE.md").read_text(encoding="utf-8")
    match = re.search(rf"^- \*\*{split}\*\*: `(.+)`$", text, re.M)
    assert match, f"no distribution for {split} in SOURCE.md"
    return json.loads(match[1])


@pytest.mark.slow
def test_sst2_rows_and_labels_match_source_md(tiny_model_dir: Path) -> None:
    folder = shared_task_data("sst2")
    expected = source_rows(folder)
    assert expected == {"train": 20000, "validation": 872, "test": 1821}
    result = runner.invoke(
        app,
        [
            "plan",
            str(FIXTURES / "sst2.yaml"),
            "--data",
            str(folder),
            "--set",
            f"base_model={tiny_model_dir}",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert {n: s["rows"] for n, s in plan["splits"].items()} == expected
    assert plan["splits"]["train"]["examples"] == 20000 and plan["dropped_rows"] == 0
    assert plan["max_length"] == plan["tokens"]["total"]["p95"]

    loaded = load_recipe(FIXTURES / "sst2.yaml", (), str(folder))
    compiled = compile_data(loaded)
    for split in ("train", "validation"):
        assert Counter(compiled.splits[split].targets) == source_distribution(folder, split)
    subset = evaluation_examples(loaded)
    assert subset.split == "validation" and len(subset.examples) == 872  # fewer rows than evaluation_size
    assert subset.examples[0].target in ("negative", "positive")


def test_conllpp_rows_and_entities_match_source_md() -> None:
    folder = shared_task_data("conllpp")
    expected = source_rows(folder)
    assert expected == {"train": 14041, "validation": 3250, "test": 3453}
    loaded = load_recipe(FIXTURES / "conllpp.yaml", (), str(folder))
    compiled = compile_data(loaded)
    assert {n: s.rows for n, s in compiled.splits.items()} == expected
    key = {"PER": "person", "ORG": "organization", "LOC": "location", "MISC": "miscellaneous"}
    for split in ("train", "validation", "test"):
        found = Counter()
        for target in compiled.splits[split].targets:
            for kind, texts in json.loads(target).items():
                found[kind] += len(texts)
        stated = source_distribution(folder, split)["entities(B- tags)"]
        assert found == {key[k]: n for k, n in stated.items()}
    train = compiled.splits["train"]
    assert train.prompts[1].endswith("Sentence: Peter Blackburn\nEntities:")
    assert json.loads(train.targets[1]) == {
        "person": ["Peter Blackburn"],
        "organization": [],
        "location": [],
        "miscellaneous": [],
    }
    subset = evaluation_examples(loaded)
    assert subset.split == "test" and len(subset.examples) == 1000
