"""Every kind of recipe mistake, each with its exact message and position.

Each fixture in fixtures/invalid/ states the errors it must produce as `# expect:` lines
(`LINE:COL: key.path: message (hint)`); the test loads it and compares the full set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_recipes.errors import RecipeInvalid, UserError
from lora_recipes.recipe.loader import load_recipe

FIXTURES = Path(__file__).parent / "fixtures" / "invalid"


def expected_errors(path: Path) -> list[str]:
    prefix = "# expect: "
    return [f"{path}:{line[len(prefix) :]}" for line in path.read_text().splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_fixture_reports_exactly_its_errors(fixture: Path) -> None:
    expected = expected_errors(fixture)
    assert expected, f"{fixture.name} declares no expected errors"
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(fixture)
    assert [str(issue) for issue in caught.value.issues] == expected


def test_fixtures_cover_every_kind_of_mistake() -> None:
    names = {p.stem for p in FIXTURES.glob("*.yaml")}
    kinds = {
        "unknown_key", "wrong_type", "out_of_range", "bad_enum", "missing_required", "duplicate_key",
        "python_tag", "syntax_error", "two_documents", "merge_key", "template_attribute", "template_index",
        "template_unclosed", "template_leaks_answer", "category_without_labels", "label_map_unknown_label",
        "quantized_full_finetune", "missing_evaluation_split", "yaml_1_2_scalars",
    }  # fmt: skip
    assert kinds <= names


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


MINIMAL = """\
version: 1
base_model: mistralai/Mistral-7B-v0.1
prompt: {template: "Review: {sentence}\\nSentiment:"}
output: {column: label, type: category, labels: [negative, positive], label_map: {0: negative, 1: positive}}
data: {dataset: ./data}
"""


def test_minimal_recipe_gets_loraland_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL)).recipe
    assert recipe.quantization.bits == 4
    assert recipe.quantization.bnb_4bit_quant_type == "nf4"
    assert recipe.quantization.bnb_4bit_use_double_quant is True
    assert recipe.quantization.bnb_4bit_compute_dtype == "bfloat16"
    assert (recipe.adapter.r, recipe.adapter.alpha, recipe.adapter.dropout) == (8, 16.0, 0.05)
    assert recipe.adapter.target_modules == ("q_proj", "v_proj")
    assert recipe.trainer.learning_rate == 2e-4
    assert recipe.trainer.learning_rate_scheduler.decay == "cosine"
    assert recipe.trainer.learning_rate_scheduler.warmup_fraction == 0.03
    assert (recipe.trainer.batch_size, recipe.trainer.gradient_accumulation_steps) == (1, 16)
    assert (recipe.trainer.eval_steps, recipe.trainer.early_stop) == (100, 5)
    assert (recipe.trainer.max_train_steps, recipe.trainer.steps_per_checkpoint) == (40000, 1000)
    assert recipe.generation.max_new_tokens == 256 and recipe.generation.temperature == 0.0
    assert recipe.data.evaluation_size == 1000
    assert recipe.model_parameters.trust_remote_code is False
    # label_map keys are the text as written: `0: negative` maps the raw value "0".
    assert dict(recipe.output.label_map) == {"0": "negative", "1": "positive"}


def test_recipe_is_frozen(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL)).recipe
    with pytest.raises(AttributeError):
        recipe.trainer.learning_rate = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        recipe.output.label_map["2"] = "neutral"  # type: ignore[index]
    assert isinstance(recipe.adapter.target_modules, tuple)


def test_scientific_notation_is_a_number_and_yes_is_text(tmp_path: Path) -> None:
    text = MINIMAL.replace("labels: [negative, positive], label_map: {0: negative, 1: positive}", "labels: [yes, no]")
    recipe = load_recipe(write(tmp_path, text + "trainer: {learning_rate: 2e-4, epochs: 1e0}\n")).recipe
    assert recipe.trainer.learning_rate == pytest.approx(0.0002)
    assert recipe.trainer.epochs == 1.0
    assert recipe.output.labels == ("yes", "no")


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = """\
version: 1
base_model: mistralai/Mistral-7B-v0.1
prompt: {template: "Review: {sentence.x}"}
output: {column: label, type: category}
data: {dataset: ./data, evaluation_split: dev}
trainer: {learning_rat: 1e-4, batch_size: 0}
"""
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(write(tmp_path, text))
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["prompt.template", "output", "data.evaluation_split", "trainer.learning_rat", "trainer.batch_size"]
    assert [issue.location.line for issue in caught.value.issues] == [3, 4, 5, 6, 6]


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(write(tmp_path, "\n".join(lines) + "\n"))
    assert "expands to more than 100,000 values" in str(caught.value)


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(write(tmp_path, "a: &a [*a]\n"))
    assert "an alias refers to itself" in str(caught.value)


def test_small_anchors_are_fine(tmp_path: Path) -> None:
    text = MINIMAL + "adapter: {target_modules: &t [q_proj, k_proj]}\ndescription: plain\n"
    assert load_recipe(write(tmp_path, text)).recipe.adapter.target_modules == ("q_proj", "k_proj")


def test_non_utf8_recipe_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"description: caf\xe9\n")
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}:6:1: byte 0xe9 is not UTF-8 (save the file as UTF-8)"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the recipe is empty"), ("- a\n- b\n", "a recipe must be a mapping of keys to values")],
)
def test_empty_or_non_mapping_recipe(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(write(tmp_path, text))
    assert message in str(caught.value)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")
