"""Every kind of recipe mistake, each with its exact message and position.

Each fixture in fixtures/invalid/ states the errors it must produce as `# expect:` lines
(`LINE:COL: key.path: message (hint)`); the test loads it and compares the full set. A fixture
for a cross-field rule also names it, `# rule: <name>` as registered in `rules.RULES`: every rule
has at least one fixture, and the rule alone reports (some of) the fixture's expected errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lora_recipes.errors import Issue, RecipeInvalid, UserError
from lora_recipes.recipe.loader import load_recipe
from lora_recipes.recipe.rules import RULES, rule
from lora_recipes.recipe.schema import fill_defaults
from lora_recipes.recipe.yamlio import dotted, parse_yaml

FIXTURES = Path(__file__).parent / "fixtures" / "invalid"
ALL_FIXTURES = sorted(FIXTURES.glob("*.yaml"))


def declared(path: Path, prefix: str) -> list[str]:
    """The rest of every line of `path` that starts with `prefix`."""
    return [line[len(prefix) :].strip() for line in path.read_text().splitlines() if line.startswith(prefix)]


def expected_errors(path: Path) -> list[str]:
    return [f"{path}:{text}" for text in declared(path, "# expect: ")]


def rules_of(path: Path) -> list[str]:
    return declared(path, "# rule: ")


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.stem)
def test_invalid_fixture_reports_exactly_its_errors(fixture: Path) -> None:
    expected = expected_errors(fixture)
    assert expected, f"{fixture.name} declares no expected errors"
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(fixture)
    assert [str(issue) for issue in caught.value.issues] == expected


def test_fixtures_cover_every_kind_of_mistake() -> None:
    names = {p.stem for p in ALL_FIXTURES}
    kinds = {
        "unknown_key", "wrong_type", "out_of_range", "bad_enum", "missing_required", "duplicate_key",
        "python_tag", "syntax_error", "two_documents", "merge_key", "template_attribute", "template_index",
        "template_unclosed", "template_leaks_answer", "category_without_labels", "label_map_unknown_label",
        "quantized_full_finetune", "missing_evaluation_split", "yaml_1_2_scalars", "non_finite_number",
        "huge_integer", "too_deep", "all_at_once", "wrong_type_said_once",
    }  # fmt: skip
    assert kinds <= names


def test_every_rule_has_a_fixture() -> None:
    covered = {name for path in ALL_FIXTURES for name in rules_of(path)}
    assert sorted(set(RULES) - covered) == [], "rules without an invalid fixture in tests/fixtures/invalid/"
    assert sorted(covered - set(RULES)) == [], "fixtures name rules that are not registered"


@pytest.mark.parametrize("fixture", [p for p in ALL_FIXTURES if rules_of(p)], ids=lambda p: p.stem)
def test_rule_fixture_is_reported_by_its_rule(fixture: Path) -> None:
    doc = parse_yaml(fixture.read_text(), str(fixture))
    data = fill_defaults(doc.data)
    expected = expected_errors(fixture)
    for name in rules_of(fixture):
        assert name in RULES, f"{fixture.name} names an unknown rule {name!r}"
        found = [
            str(Issue(doc.locate(v.path, key=v.key), dotted(v.path), v.message, v.hint)) for v in RULES[name](data)
        ]
        assert found, f"rule {name} reports nothing on {fixture.name}"
        assert set(found) <= set(expected), f"rule {name} reports errors {fixture.name} does not expect"


def test_rules_are_documented_and_named_once() -> None:
    assert all((check.__doc__ or "").strip() for check in RULES.values())

    def undocumented(data: dict[str, Any]) -> Any:
        yield from ()

    def category_output_needs_labels(data: dict[str, Any]) -> Any:
        """A second rule under a registered name."""
        yield from ()

    before = list(RULES)
    with pytest.raises(ValueError, match="needs a docstring"):
        rule(undocumented)
    with pytest.raises(ValueError, match="registered twice"):
        rule(category_output_needs_labels)
    assert list(RULES) == before


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
