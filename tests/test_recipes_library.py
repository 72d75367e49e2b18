"""The recipe library: one recipe per LoRA Land task, each valid, plannable without data, written
to the library's conventions, and readable from the local copies of its data set."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import RECIPES, shared_task_data
from lora_recipes.cli import app
from lora_recipes.data.pipeline import check_columns, derive_columns, fixed_examples, targets_of
from lora_recipes.data.prompts import PromptCompiler
from lora_recipes.data.sources import SourceSplit
from lora_recipes.recipe.loader import LoadedRecipe, load_recipe
from lora_recipes.recipe.schema import load_schema, subschema
from lora_recipes.recipe.template import parse_template, render_value
from lora_recipes.recipe.yamlio import parse_yaml

TASKS = sorted(t for t in load_schema()["properties"]["evaluation"]["properties"]["reference_task"]["enum"] if t)
SCHEMA_COMMENT = "# yaml-language-server: $schema=../schemas/recipe.schema.json"
GENERATION_METRICS = {"rouge_l", "stsb", "gsm8k"}

runner = CliRunner()


def recipe_path(task: str) -> Path:
    return RECIPES / f"{task}.yaml"


def library() -> list[LoadedRecipe]:
    return [load_recipe(recipe_path(task)) for task in TASKS]


def test_one_recipe_per_loraland_task() -> None:
    assert len(TASKS) == 31
    missing = [task for task in TASKS if not recipe_path(task).is_file()]
    assert missing == []


def test_the_whole_library_validates() -> None:
    files = [str(recipe_path(task)) for task in TASKS]
    result = runner.invoke(app, ["validate", *files])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "31 recipes valid"


VALIDATION_ROWS = 1000


@pytest.mark.parametrize("task", TASKS)
def test_recipe_plans_without_data(task: str) -> None:
    result = runner.invoke(app, ["plan", str(recipe_path(task)), "--no-data", "--format", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["name"] == task
    assert plan["steps"]["total"] > 0
    assert plan["estimate"]["hours"] > 0 and plan["estimate"]["cost_usd"] > 0, plan["estimate"]
    assert plan["max_length"] == plan["recipe"]["data"]["expected_tokens"]
    assert plan["warnings"] == []
    # Validation stays a small share of the run: at most 1,000 rows each time, bounded where the
    # split is larger (and not where the bound would change nothing).
    bound = plan["recipe"]["trainer"]["validation_max_rows"]
    assert plan["validation_rows"] <= VALIDATION_ROWS
    assert (bound == VALIDATION_ROWS) == (plan["validation_split_rows"] > VALIDATION_ROWS), bound


@pytest.mark.parametrize("task", TASKS)
def test_recipe_follows_library_conventions(task: str) -> None:
    path = recipe_path(task)
    assert path.read_text(encoding="utf-8").splitlines()[0] == SCHEMA_COMMENT
    recipe = load_recipe(path).recipe
    assert recipe.name == task and recipe.evaluation.reference_task == task
    assert recipe.base_model == "mistralai/Mistral-7B-v0.1"
    assert recipe.description and len(recipe.description) > 80
    # The target prefix supplies the space before the answer; a template ending in whitespace
    # would put two spaces (or a stray newline) in front of every answer.
    assert not recipe.prompt.template[-1].isspace()
    assert recipe.data.expected_tokens is not None and recipe.data.expected_rows.train is not None
    if recipe.output.type == "category":
        # Two-way yes/no (or negative/positive) tasks use LoRA Land's flexible binary reading,
        # which also accepts 1/0 and true/false; every other label set needs the label itself.
        binary = sorted(recipe.output.labels) in (["no", "yes"], ["negative", "positive"])
        assert recipe.evaluation.metric == ("flexible_binary_accuracy" if binary else "accuracy")
        assert recipe.evaluation.mode == "generate"
    else:
        assert recipe.evaluation.metric in GENERATION_METRICS
    labels = recipe.output.labels
    for label in labels:
        # A label inside another one ("toxic" in "non-toxic") makes substring matching ambiguous.
        others = [other for other in labels if other != label and label.lower() in other.lower()]
        assert not others or task == "covid", f"{label!r} is part of {others}"


def leaves(raw: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in raw.items():
        here = (*path, key)
        if isinstance(value, dict) and key not in ("label_map", "entity_types"):
            yield from leaves(value, here)
        else:
            yield here, value


def schema_of(path: tuple[str, ...]) -> dict[str, Any] | None:
    """The subschema at `path`, reaching into the user-named entries of data.columns."""
    if path[:2] == ("data", "columns") and len(path) > 3:
        entry = load_schema()["properties"]["data"]["properties"]["columns"]["additionalProperties"]
        found: dict[str, Any] | None = entry["properties"].get(path[3])
        return found
    return subschema(path)


# Stated in every recipe even where it is the default: which split LoRA Land scored is part of
# what a reader compares.
ALWAYS_STATED = {"data.evaluation_split"}


@pytest.mark.parametrize("task", TASKS)
def test_recipe_does_not_restate_defaults(task: str) -> None:
    """Only what differs from LoRA Land's defaults (the schema's) is written in a recipe."""
    path = recipe_path(task)
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path)).data
    restated = []
    for key_path, value in leaves(raw):
        sub = schema_of(key_path)
        if ".".join(key_path) in ALWAYS_STATED:
            continue
        if sub is not None and "default" in sub and sub["default"] == value:
            restated.append(".".join(key_path))
    assert restated == []


def source_columns(loaded: LoadedRecipe) -> set[str]:
    """Top-level source fields a recipe reads: template columns and the roots of derived columns'
    inputs that are not themselves derived, plus the output column."""
    recipe = loaded.recipe
    derived = set(recipe.data.columns)
    needed = set(parse_template(recipe.prompt.template).columns) | {recipe.output.column}
    for spec in recipe.data.columns.values():
        needed |= {f for f in (spec.from_, spec.tags, spec.index) if f}
        if spec.op == "enumerate" and spec.markers not in ("letters", "numbers"):
            needed.add(spec.markers)
    return {name.split(".")[0] for name in needed} - derived


# Tasks whose data is not on the hub in the form the recipe reads: their recipes point at a
# local folder and say how to build it.
LOCAL_DATA_TASKS = ["arc_combined", "covid", "customer_support", "jigsaw", "legal"]


def test_local_data_tasks_are_the_ones_reading_local_folders() -> None:
    assert [loaded.name for loaded in library() if loaded.recipe.data.dataset.startswith("./")] == LOCAL_DATA_TASKS


@pytest.mark.parametrize("task", LOCAL_DATA_TASKS)
def test_local_data_recipes_say_which_columns_to_provide(task: str) -> None:
    loaded = load_recipe(recipe_path(task))
    description = loaded.recipe.description or ""
    assert "not on the Hugging Face hub" in description or "local folder" in description
    missing = [c for c in sorted(source_columns(loaded)) if f"`{c}`" not in description]
    assert missing == []


def derived_rows(loaded: LoadedRecipe, rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Rows after the recipe's derived columns, through the data pipeline's own code."""
    return derive_columns(loaded, SourceSplit("train", where, rows))


def compiler(loaded: LoadedRecipe) -> PromptCompiler:
    """The recipe's prompt compiler with its fixed examples, as the data pipeline builds it."""
    return fixed_examples(loaded, PromptCompiler.from_recipe(loaded.recipe.prompt, loaded.recipe.output))


def example_source(task: str, example: Mapping[str, Any]) -> dict[str, Any]:
    """A fixed example as a row in its hub dataset's layout (tags written out by hand)."""
    if task == "conllpp":  # O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC
        return {"tokens": example["tokens"].split(" "), "ner_tags": [1, 2, 0, 0, 0, 0, 3, 0, 0, 0, 5, 0, 7, 0, 0, 0]}
    if task == "bc5cdr":  # O, B-Chemical, B-Disease, I-Disease, I-Chemical
        return {"tokens": example["tokens"].split(" "), "tags": [0, 0, 1, 0, 0, 0, 2, 0, 2, 3, 3, 0]}
    assert task == "webnlg"
    return {
        "modified_triple_sets": {"mtriple_set": [example["triples"].split("\n")]},
        "lex": {"text": [example["text"], "A second reference that is not the answer."]},
    }


@pytest.mark.parametrize("task", ["bc5cdr", "conllpp", "webnlg"])
def test_fixed_examples_match_the_derived_answer_format(task: str) -> None:
    """A fixed example's answer must read exactly like the answers derived from real rows."""
    loaded = load_recipe(recipe_path(task))
    example = loaded.recipe.prompt.examples[0]
    [row] = derived_rows(loaded, [example_source(task, example)], "the example")
    for column in loaded.recipe.data.columns:
        assert render_value(row[column]) == render_value(example[column]), column
    prompt = compiler(loaded).prompt(row)
    assert prompt.count(loaded.recipe.prompt.template.splitlines()[-1]) == 2  # the example, then the row


def test_every_fixed_example_renders() -> None:
    with_examples = [loaded for loaded in library() if loaded.recipe.prompt.examples]
    assert {loaded.name for loaded in with_examples} >= {"conllpp", "bc5cdr", "e2e_nlg", "viggo", "webnlg"}
    for loaded in with_examples:
        block = compiler(loaded).block
        for example in loaded.recipe.prompt.examples:
            assert render_value(example[loaded.recipe.output.column]) in block


# Local copies in ../shared/data (task -> folder, and the --set options its description gives
# where the local layout differs from the hub's).
LOCAL_COPIES = {
    "arc_combined": ("arc", []),
    "boolq": ("boolq", ["data.splits.train=validation", "data.splits.validation=null"]),
    "conllpp": ("conllpp", []),
    "dbpedia": ("dbpedia", ["data.splits.train=validation", "data.splits.validation=null"]),
    "e2e_nlg": ("e2e_nlg", []),
    "glue_cola": ("cola", []),
    "glue_mrpc": ("mrpc", []),
    "glue_sst2": ("sst2", []),
    "gsm8k": ("gsm8k", []),
    "jigsaw": ("jigsaw", []),
    "viggo": ("viggo", []),
    "wikisql": ("wikisql", ["data.columns.sql_text.from=sql"]),
}


def first_rows(path: Path, n: int) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


@pytest.mark.shared_data
@pytest.mark.parametrize("task", sorted(LOCAL_COPIES))
def test_recipe_reads_the_local_copy(task: str) -> None:
    """The recipe's columns, labels and derived columns fit the local copy's first rows, checked
    by the data pipeline's own column and label checks."""
    folder_name, overrides = LOCAL_COPIES[task]
    folder = shared_task_data(folder_name)
    loaded = load_recipe(recipe_path(task), overrides, data_path=str(folder))
    splits = loaded.recipe.data.splits
    prompts = compiler(loaded)
    last_line = loaded.recipe.prompt.template.splitlines()[-1]
    for split in [name for name in (splits.train, splits.validation, splits.test) if name is not None]:
        where = str(folder / f"{split}.jsonl")
        source = SourceSplit(split, where, first_rows(folder / f"{split}.jsonl", 200))
        rows = derive_columns(loaded, source)
        check_columns(loaded, source, rows, prompts)  # every template column and the output exist
        targets = targets_of(loaded, source, rows)  # raises on a label the recipe does not map
        assert all(targets), f"{where}: rows without an answer"
        assert all(prompt.endswith(last_line) for prompt in prompts.prompts(rows))
        if loaded.recipe.output.type == "category":
            assert set(targets) <= set(loaded.recipe.output.labels)
