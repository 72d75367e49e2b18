"""Derived columns (`data.columns`): nested fields, option lists, list items, NER entities, rounding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_helpers import line_of, load, write_jsonl, write_recipe
from lora_recipes.data.pipeline import compile_data
from lora_recipes.errors import UserError


def compile_rows(tmp_path: Path, rows: list[dict[str, Any]], columns: dict[str, Any], template: str, output: str):
    write_jsonl(tmp_path / "rows.jsonl", rows)
    recipe = {
        "version": 1,
        "base_model": "mistralai/Mistral-7B-v0.1",
        "prompt": {"template": template},
        "output": {"column": output},
        "data": {
            "dataset": "rows.jsonl",
            "columns": columns,
            "splits": {"validation": None, "test": None},
            "split": {"validation_fraction": 0, "test_fraction": 0},
            "evaluation_split": "train",
        },
    }
    path = write_recipe(tmp_path, recipe)
    return path, compile_data(load(path)).splits["train"]


def test_copy_reaches_nested_fields_and_list_items(tmp_path: Path) -> None:
    rows = [{"question": "q?", "sql": {"human_readable": "SELECT a"}, "answers": {"text": ["first", "second"]}}]
    _, train = compile_rows(
        tmp_path,
        rows,
        {"query": {"from": "sql.human_readable"}, "hint": {"from": "answers.text.1"}},
        "{question} hint: {hint}",
        "query",
    )
    assert train.prompts == ["q? hint: second"] and train.targets == ["SELECT a"]


def test_join_and_enumerate_options(tmp_path: Path) -> None:
    rows = [
        {
            "q": "Pick one",
            "choices": {"text": ["red", "green", "blue"], "label": ["A", "B", "C"]},
            "words": ["x", "y"],
            "answer": "B",
        }
    ]
    columns = {
        "letters": {"from": "choices.text", "op": "enumerate"},
        "numbers": {"from": "choices.text", "op": "enumerate", "markers": "numbers", "separator": "; "},
        "marked": {"from": "choices.text", "op": "enumerate", "markers": "choices.label", "separator": " | "},
        "joined": {"from": "words", "op": "join", "separator": "+"},
    }
    _, train = compile_rows(tmp_path, rows, columns, "{q}\n{letters}\n{numbers}\n{marked}\n{joined}", "answer")
    assert train.prompts == [
        "Pick one\nA. red\nB. green\nC. blue\n1. red; 2. green; 3. blue\nA. red | B. green | C. blue\nx+y"
    ]


def test_index_picks_the_item_at_a_position_column(tmp_path: Path) -> None:
    rows = [
        {"question": "2+2?", "choices": ["3", "4", "5"], "answer": 1},
        {"question": "1+1?", "choices": ["2", "3"], "answer": "0"},
    ]
    _, train = compile_rows(
        tmp_path, rows, {"gold": {"from": "choices", "op": "index", "index": "answer"}}, "{question}", "gold"
    )
    assert train.targets == ["4", "2"]


def test_index_out_of_range_names_file_row_and_recipe_line(tmp_path: Path) -> None:
    rows = [{"question": "a", "choices": ["x"], "answer": 0}, {"question": "b", "choices": ["x"], "answer": 3}]
    with pytest.raises(UserError) as err:
        compile_rows(
            tmp_path, rows, {"gold": {"from": "choices", "op": "index", "index": "answer"}}, "{question}", "gold"
        )
    path = tmp_path / "recipe.yaml"
    message = str(err.value)
    assert f"{tmp_path / 'rows.jsonl'}: row 2, column 'answer'" in message
    assert f"data.columns.gold ({path}:{line_of(path, 'gold:')}:" in message
    assert "position 3 is outside the 1 items of 'choices'" in message


def test_entities_from_iob_tag_names_in_the_declared_order(tmp_path: Path) -> None:
    rows = [
        {
            "tokens": ["Peter", "Blackburn", "visited", "New", "York", "and", "Paris", "for", "EU", "talks"],
            "ner_tags": ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-LOC", "O", "B-ORG", "O"],
        }
    ]
    columns = {
        "entities": {
            "from": "tokens",
            "op": "entities",
            "tags": "ner_tags",
            "entity_types": {"PER": "person", "ORG": "organization", "LOC": "location", "MISC": "miscellaneous"},
        }
    }
    _, train = compile_rows(tmp_path, rows, columns, "Sentence: {tokens}", "entities")
    assert train.prompts == ["Sentence: Peter Blackburn visited New York and Paris for EU talks"]
    target = json.loads(train.targets[0])
    assert list(target) == ["person", "organization", "location", "miscellaneous"]
    assert target == {
        "person": ["Peter Blackburn"],
        "organization": ["EU"],
        "location": ["New York", "Paris"],
        "miscellaneous": [],
    }


def test_entities_from_integer_tags_and_every_type_found(tmp_path: Path) -> None:
    names = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    rows = [{"tokens": ["aspirin", "eases", "head", "pain"], "tags": [1, 0, 3, 4]}]
    columns = {"entities": {"from": "tokens", "op": "entities", "tags": "tags", "tag_names": names}}
    _, train = compile_rows(tmp_path, rows, columns, "{tokens}", "entities")
    assert json.loads(train.targets[0]) == {"Chemical": ["aspirin"], "Disease": ["head pain"]}


def test_entities_with_tags_and_tokens_of_different_lengths_is_an_error(tmp_path: Path) -> None:
    rows = [{"tokens": ["a", "b"], "ner_tags": ["O"]}]
    columns = {"entities": {"from": "tokens", "op": "entities", "tags": "ner_tags"}}
    with pytest.raises(UserError, match=r"row 1, column 'ner_tags': data\.columns\.entities .*1 tags for 2 tokens"):
        compile_rows(tmp_path, rows, columns, "{tokens}", "entities")


def test_round_and_a_missing_source_column(tmp_path: Path) -> None:
    rows = [{"a": "x", "score": 3.14159}, {"a": "y", "score": 2.5}]
    _, train = compile_rows(tmp_path, rows, {"s": {"from": "score", "op": "round", "digits": 2}}, "{a}", "s")
    assert train.targets == ["3.14", "2.5"]
    with pytest.raises(UserError) as err:
        compile_rows(tmp_path, rows, {"s": {"from": "scroe", "op": "round"}}, "{a}", "s")
    assert "reads the column 'scroe', which" in str(err.value) and "did you mean 'score'?" in str(err.value)
