"""The prompt compiler: template safety, few-shot blocks, the prompter for new rows, and the fixed
evaluation subset."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_helpers import line_of, load, sentiment_folder, sentiment_recipe, sentiment_rows, write_jsonl, write_recipe
from lora_recipes.cli import app
from lora_recipes.data.pipeline import build_prompter, compile_data, evaluation_examples
from lora_recipes.errors import UserError

runner = CliRunner()


@pytest.mark.parametrize(
    ("template", "problem"),
    [("Review: {text.__class__}\nSentiment:", "attribute access"), ("Review: {text[0]}\nSentiment:", "indexing")],
)
def test_templates_reaching_into_values_are_refused_with_their_line(
    tmp_path: Path, template: str, problem: str
) -> None:
    sentiment_folder(tmp_path, train=5, validation=2, test=0)
    path = write_recipe(tmp_path, sentiment_recipe(prompt={"template": template}))
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2
    assert f"{path}:{line_of(path, 'template:')}:" in result.output and problem in result.output
    assert "Traceback" not in result.output


def test_cells_are_inserted_as_text_never_interpreted(tmp_path: Path) -> None:
    rows = [{"text": "{label} and {text.__class__} and {{braces}}", "label": 1}, *sentiment_rows(4)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "validation.jsonl", sentiment_rows(2, start=50))
    recipe = sentiment_recipe()
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0})
    train = compile_data(load(write_recipe(tmp_path, recipe))).splits["train"]
    assert train.prompts[0] == "Review: {label} and {text.__class__} and {{braces}}\nSentiment:"


def test_a_template_column_the_data_lacks_points_at_the_template_line(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=5, validation=2, test=2)
    path = write_recipe(tmp_path, sentiment_recipe(prompt={"template": "Review: {txt}\nSentiment:"}))
    with pytest.raises(UserError) as err:
        compile_data(load(path))
    message = str(err.value)
    assert message.startswith(f"{path}:{line_of(path, 'template:')}:")
    assert "{txt} names a column that" in message and "did you mean 'text'?" in message
    assert "columns: label, text" in message


def test_fixed_examples_come_first_with_their_mapped_answers(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=5, validation=2, test=0)
    examples = [{"text": "a gem", "label": 1}, {"text": "a bore", "label": "negative"}]
    recipe = sentiment_recipe(prompt={"template": "Review: {text}\nSentiment:", "examples": examples})
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0})
    compiled = compile_data(load(write_recipe(tmp_path, recipe)))
    block = "Review: a gem\nSentiment: positive\n\nReview: a bore\nSentiment: negative\n\n"
    first = sentiment_rows(1)[0]["text"]
    assert compiled.splits["train"].prompts[0] == block + f"Review: {first}\nSentiment:"
    assert compiled.splits["validation"].prompts[0].startswith(block)
    assert compiled.few_shot == {"type": "fixed", "count": 2}


def test_retrieved_examples_are_drawn_with_the_seed_and_kept_out_of_training(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=30, validation=2, test=0)
    recipe = sentiment_recipe(prompt={"template": "Review: {text}\nSentiment:", "retrieval": {"k": 2}})
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0})
    path = write_recipe(tmp_path, recipe)
    compiled = compile_data(load(path))
    train = compiled.splits["train"]
    assert train.rows == 28 and compiled.few_shot["type"] == "retrieval" and len(compiled.few_shot["rows"]) == 2
    block = compiled.compiler.block
    shots = [s.split("\n")[0].removeprefix("Review: ") for s in block.split("\n\n") if s]
    assert len(shots) == 2
    assert all(s not in [p.split("\n")[-2].removeprefix("Review: ") for p in train.prompts] for s in shots)
    assert all(p.startswith(block) for p in train.prompts)
    assert compile_data(load(path)).compiler.block == block  # same seed, same draw
    other = compile_data(load(path, "seed=7")).compiler.block
    assert other != block


def test_prompter_renders_new_rows_as_training_did(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=5, validation=2, test=0)
    examples = [{"text": "a gem", "label": 1}]
    recipe = sentiment_recipe(prompt={"template": "Review: {text}\nSentiment:", "examples": examples})
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0})
    loaded = load(write_recipe(tmp_path, recipe))
    prompter = build_prompter(loaded)
    assert prompter({"text": "so so"}) == "Review: a gem\nSentiment: positive\n\nReview: so so\nSentiment:"
    assert prompter({"text": "fine"}) == compile_data(loaded).compiler.block + "Review: fine\nSentiment:"
    with pytest.raises(UserError) as err:
        prompter({"review": "x", "id": 3})
    assert "has no column 'text'" in str(err.value) and "columns present: id, review" in str(err.value)


def test_prompter_computes_derived_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"q": "?", "choices": ["a", "b"], "answer": 1}])
    recipe = {
        "version": 1,
        "base_model": "mistralai/Mistral-7B-v0.1",
        "prompt": {"template": "{q}\n{options}\nAnswer:"},
        "output": {"column": "gold"},
        "data": {
            "dataset": "rows.jsonl",
            "columns": {
                "options": {"from": "choices", "op": "enumerate"},
                "gold": {"from": "choices", "op": "index", "index": "answer"},
            },
            "splits": {"validation": None, "test": None},
            "split": {"validation_fraction": 0, "test_fraction": 0},
            "evaluation_split": "train",
        },
    }
    prompter = build_prompter(load(write_recipe(tmp_path, recipe)))
    assert prompter({"q": "Which?", "choices": ["x", "y", "z"]}) == "Which?\nA. x\nB. y\nC. z\nAnswer:"


def test_evaluation_examples_are_the_first_rows_with_a_gold_answer(tmp_path: Path) -> None:
    rows = sentiment_rows(6, start=100)
    rows[1]["label"] = None  # no gold answer: skipped, and the subset moves on to the next row
    sentiment_folder(tmp_path, train=10, validation=0, test=0)
    write_jsonl(tmp_path / "data" / "validation.jsonl", rows)
    recipe = sentiment_recipe()
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0}, evaluation_size=3)
    loaded = load(write_recipe(tmp_path, recipe))
    subset = evaluation_examples(loaded)
    assert subset.split == "validation" and subset.labels == ("negative", "positive")
    assert [e.prompt for e in subset.examples] == [f"Review: {r['text']}\nSentiment:" for r in (rows[0], *rows[2:4])]
    assert [e.target for e in subset.examples] == ["positive", "positive", "negative"]
    assert [e.row for e in subset.examples] == [0, 1, 2] and subset.skipped_rows == 1
    limited = evaluation_examples(loaded, limit=2)
    assert [e.prompt for e in limited.examples] == [e.prompt for e in subset.examples[:2]]
    assert limited.hash != subset.hash
    assert evaluation_examples(loaded).hash == subset.hash
    changed = evaluation_examples(load(loaded.path, "prompt.template='Text: {text} ->'"))
    assert changed.hash != subset.hash
