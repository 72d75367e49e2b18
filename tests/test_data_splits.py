"""Splits: published ones used, missing ones carved by row hash (stable, stratified), the split
column, row caps and content hashes."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from data_helpers import (
    line_of,
    load,
    sentiment_folder,
    sentiment_recipe,
    sentiment_rows,
    write_csv,
    write_jsonl,
    write_recipe,
)
from lora_recipes.data.pipeline import compile_data
from lora_recipes.data.splits import carve, row_hash
from lora_recipes.errors import UserError


def carving_recipe(tmp_path: Path, **data_changes) -> Path:
    recipe = sentiment_recipe()
    recipe["data"] = {
        "dataset": "rows.jsonl",
        "splits": {"validation": None, "test": None},
        "evaluation_split": "test",
        **data_changes,
    }
    return write_recipe(tmp_path, recipe)


def split_contents(tmp_path: Path) -> dict[str, set[tuple[str, str]]]:
    compiled = compile_data(load(tmp_path / "recipe.yaml"))
    return {n: set(zip(s.prompts, s.targets, strict=True)) for n, s in compiled.splits.items()}


def test_carved_splits_do_not_depend_on_row_order(tmp_path: Path) -> None:
    rows = sentiment_rows(200)
    write_jsonl(tmp_path / "rows.jsonl", rows)
    carving_recipe(tmp_path)
    before = split_contents(tmp_path)
    assert {n: len(v) for n, v in before.items()} == {"train": 170, "validation": 10, "test": 20}
    random.Random(7).shuffle(rows)
    write_jsonl(tmp_path / "rows.jsonl", rows)
    assert split_contents(tmp_path) == before


def test_carved_splits_are_stratified_by_label(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(200, positive_every=4))  # 50 positive, 150 negative
    carving_recipe(tmp_path, split={"validation_fraction": 0.1, "test_fraction": 0.2})
    compiled = compile_data(load(tmp_path / "recipe.yaml"))
    counts = {n: Counter(s.targets) for n, s in compiled.splits.items()}
    assert counts["validation"] == {"negative": 15, "positive": 5}
    assert counts["test"] == {"negative": 30, "positive": 10}
    assert counts["train"] == {"negative": 105, "positive": 35}
    assert "stratified by label" in compiled.splits["test"].origin


def test_row_hash_is_canonical_json_of_the_row() -> None:
    row = {"text": "ünïcode", "label": 1}
    canonical = json.dumps({"label": 1, "text": "ünïcode"}, ensure_ascii=False, separators=(",", ":"))
    assert row_hash(row) == hashlib.sha256(canonical.encode()).hexdigest()
    assert row_hash({"label": 1, "text": "ünïcode"}) == row_hash(row)
    assert row_hash({"text": "ünïcode", "label": 0}) != row_hash(row)


def test_carve_takes_the_smallest_hashes_per_group() -> None:
    hashes = ["9", "1", "8", "2", "7", "3", "6", "4"]
    strata = ["a", "a", "a", "a", "b", "b", "b", "b"]
    kept, (first,) = carve(range(8), hashes, strata, [0.25])
    assert first == [1, 5]  # hash "1" of group a, hash "3" of group b
    assert kept == [0, 2, 3, 4, 6, 7]


def test_published_splits_are_used_with_their_content_hashes(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=30, validation=5, test=7)
    compiled = compile_data(load(write_recipe(tmp_path, sentiment_recipe())))
    assert {n: s.rows for n, s in compiled.splits.items()} == {"train": 30, "validation": 5, "test": 7}
    assert compiled.splits["test"].used is False  # the evaluation split is validation
    first = {n: s.hash for n, s in compiled.splits.items()}
    rows = sentiment_rows(30)
    rows[0]["label"] = 0
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    again = {n: s.hash for n, s in compile_data(load(tmp_path / "recipe.yaml")).splits.items()}
    assert again["train"] != first["train"] and again["validation"] == first["validation"]


def test_a_named_split_the_source_lacks_points_at_the_recipe(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=3)
    recipe = sentiment_recipe()
    recipe["data"]["splits"] = {"validation": "dev"}
    path = write_recipe(tmp_path, recipe)
    with pytest.raises(UserError) as err:
        compile_data(load(path))
    message = str(err.value)
    assert f"{path}:{line_of(path, 'validation: dev')}:" in message
    assert "has no 'dev' split (it has: test, train)" in message
    assert "set it to null to carve it from train" in message


def test_split_column_assigns_rows(tmp_path: Path) -> None:
    codes = [0, 0, 1, "2", 0, 2.0, 1, 0]
    write_csv(tmp_path / "all.csv", ["text", "label", "split"], [[f"t{i}", i % 2, c] for i, c in enumerate(codes)])
    recipe = sentiment_recipe()
    recipe["data"] = {"dataset": "all.csv", "split": {"type": "column"}, "evaluation_split": "test"}
    compiled = compile_data(load(write_recipe(tmp_path, recipe)))
    assert {n: s.rows for n, s in compiled.splits.items()} == {"train": 4, "validation": 2, "test": 2}
    assert compiled.splits["validation"].prompts[0] == "Review: t2\nSentiment:"


def test_split_column_value_outside_0_1_2_is_an_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "all.csv", ["text", "label", "split"], [["a", 0, 0], ["b", 1, 5]])
    recipe = sentiment_recipe()
    recipe["data"] = {"dataset": "all.csv", "split": {"type": "column"}, "evaluation_split": "test"}
    with pytest.raises(UserError, match=r"all\.csv: row 2, column 'split': 5 is not a split \(use 0 train"):
        compile_data(load(write_recipe(tmp_path, recipe)))


def test_max_rows_keeps_the_first_rows_in_source_order(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=30, validation=8, test=0)
    recipe = sentiment_recipe()
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0}, max_rows={"train": 5, "validation": 3})
    compiled = compile_data(load(write_recipe(tmp_path, recipe)))
    train = compiled.splits["train"]
    assert train.rows == 5 and train.capped_rows == 25
    assert train.prompts == [f"Review: {r['text']}\nSentiment:" for r in sentiment_rows(5)]
    assert compiled.splits["validation"].rows == 3
