"""`--set key.path=value` and `--data PATH`: parsed with the recipe's YAML rules, validated alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_recipes.errors import RecipeInvalid
from lora_recipes.recipe.loader import load_recipe

RECIPE = """\
version: 1
base_model: mistralai/Mistral-7B-v0.1
prompt: {template: "Review: {sentence}\\nSentiment:"}
output: {column: label}
data: {dataset: ./data}
"""


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "recipes" / "r.yaml"
    path.parent.mkdir()
    path.write_text(RECIPE)
    return path


def test_overrides_set_nested_values_with_yaml_types(recipe_file: Path) -> None:
    loaded = load_recipe(
        recipe_file,
        ["trainer.learning_rate=1e-4", "adapter.target_modules=[q_proj, k_proj]", "quantization.bits=null",
         "trainer.learning_rate_scheduler.decay=linear"],
    )  # fmt: skip
    r = loaded.recipe
    assert r.trainer.learning_rate == 1e-4
    assert r.adapter.target_modules == ("q_proj", "k_proj")
    assert r.quantization.bits is None
    assert r.trainer.learning_rate_scheduler.decay == "linear"
    assert r.trainer.learning_rate_scheduler.warmup_fraction == 0.03  # siblings keep their defaults


def test_later_override_wins(recipe_file: Path) -> None:
    loaded = load_recipe(recipe_file, ["trainer.epochs=2", "trainer.epochs=5"])
    assert loaded.recipe.trainer.epochs == 5


def test_override_errors_point_at_the_option(recipe_file: Path) -> None:
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(recipe_file, ["trainer.epochs=1", "trainer.learning_rat=1e-4", "adapter.r=abc"])
    assert [str(i) for i in caught.value.issues] == [
        "--set:2:1: trainer.learning_rat: unknown key (did you mean learning_rate?)",
        "--set:3:1: adapter.r: expected an integer, got text 'abc' (e.g. 8)",
    ]


@pytest.mark.parametrize("bad", ["trainer.epochs", "=3", "trainer..epochs=3", "trainer.epochs:3"])
def test_malformed_override(recipe_file: Path, bad: str) -> None:
    with pytest.raises(RecipeInvalid, match=r"write --set key\.path=value"):
        load_recipe(recipe_file, [bad])


def test_override_value_yaml_error_is_reported(recipe_file: Path) -> None:
    with pytest.raises(RecipeInvalid, match=r"--set:1:\d+: YAML syntax error"):
        load_recipe(recipe_file, ["adapter.target_modules=[q_proj"])


def test_override_through_a_scalar_is_refused(recipe_file: Path) -> None:
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(recipe_file, ["base_model.revision=main"])
    assert "base_model" in str(caught.value)


def test_data_override_is_relative_to_the_current_directory(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    from_recipe = load_recipe(recipe_file)
    assert from_recipe.local_path(("data", "dataset"), from_recipe.recipe.data.dataset) == recipe_file.parent / "data"
    from_cli = load_recipe(recipe_file, data_path="elsewhere/sst2")
    assert from_cli.recipe.data.dataset == "elsewhere/sst2"
    assert from_cli.local_path(("data", "dataset"), from_cli.recipe.data.dataset) == Path("elsewhere/sst2")
    via_set = load_recipe(recipe_file, ["data.dataset=local.jsonl"])
    assert via_set.local_path(("data", "dataset"), via_set.recipe.data.dataset) == Path("local.jsonl")
