"""Data sources at their edges: split files in several parts, paths that do not exist or cannot be
read, empty files, a max length that cuts most validation rows, and splits carved from train when
the source lacks them. Every mistake is one message naming the path (and row) and the fix, exit 2.

Permission denial (EACCES) is not tested: the tests may run as root, which reads everything. The
same code path is exercised by the other OS conditions below (a folder where a file is expected, a
FIFO, a dangling symbolic link, a file used as a folder)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_helpers import (
    WordTokenizer,
    line_of,
    load,
    sentiment_folder,
    sentiment_recipe,
    sentiment_rows,
    write_jsonl,
    write_recipe,
)
from lora_recipes.cli import app
from lora_recipes.data import hub
from lora_recipes.data.pipeline import compile_data, prepare_training_data
from lora_recipes.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "bad_data"
runner = CliRunner()


def error_of(path: Path, *sets: str, data: str | None = None) -> str:
    with pytest.raises(UserError) as err:
        compile_data(load(path, *sets, data=data))
    return str(err.value)


def folder_recipe(tmp_path: Path, **data_changes: object) -> Path:
    recipe = sentiment_recipe()
    recipe["data"].update(data_changes)
    return write_recipe(tmp_path, recipe)


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "unreachable_reason", lambda: "https://huggingface.co did not answer")
    monkeypatch.setattr(hub, "offline_mode", lambda: False)


# --- 1. a split in several files ------------------------------------------------------------------


def test_split_parts_are_all_read_bare_name_first_then_in_natural_order(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "parts", tmp_path / "data")
    compiled = compile_data(load(folder_recipe(tmp_path)))
    train = compiled.splits["train"]
    assert train.rows == 4 + 2 + 3
    assert [p.removeprefix("Review: ").removesuffix("\nSentiment:") for p in train.prompts] == [
        *(f"plain {i}" for i in range(4)),
        *(f"part2 {i}" for i in range(2)),
        *(f"part10 {i}" for i in range(3)),
    ]
    assert "train-part10.jsonl" in compiled.source.description


def test_a_row_error_in_a_later_part_names_that_file_and_its_row(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "parts", tmp_path / "data")
    part = tmp_path / "data" / "train-part2.jsonl"
    write_jsonl(part, [{"text": "fine", "label": 1}, {"text": "odd", "label": "neutral"}])
    message = error_of(folder_recipe(tmp_path))
    assert message.startswith(f"{part}: row 2, column 'label': 'neutral' is not one of output.labels")


def test_parts_with_different_columns_are_an_error(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "parts", tmp_path / "data")
    part = write_jsonl(tmp_path / "data" / "train-part2.jsonl", [{"review": "x", "label": 1}])
    message = error_of(folder_recipe(tmp_path))
    assert message.startswith(f"{part}: columns review, label, but {tmp_path / 'data' / 'train.jsonl'} has")
    assert "every file of the 'train' split needs the same columns" in message


@pytest.mark.parametrize("name", ["train (1).jsonl", "train.part2.jsonl", "Train Copy.csv"])
def test_a_data_file_outside_the_naming_rule_is_an_error(tmp_path: Path, name: str) -> None:
    sentiment_folder(tmp_path, train=10, validation=3, test=3)
    stray = write_jsonl(tmp_path / "data" / name, sentiment_rows(2))
    message = error_of(folder_recipe(tmp_path))
    assert message.startswith(f"{stray}: not named by split")
    assert "SPLIT.EXT or SPLIT-PART.EXT" in message and "train-part2.jsonl" in message


def test_files_that_are_not_data_are_ignored(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=3, test=3)
    (tmp_path / "data" / "README.md").write_text("# my data\n", encoding="utf-8")
    (tmp_path / "data" / ".train.jsonl.swp").write_bytes(b"\x00")
    assert compile_data(load(folder_recipe(tmp_path))).splits["train"].rows == 10


# --- 2. a path that does not exist ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["./nowhere", "nowhere.jsonl", "~/nowhere-lora-recipes", "a/b/c"])
def test_a_missing_data_path_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    message = error_of(folder_recipe(tmp_path), data=value)
    expected = Path(value).expanduser().absolute()
    assert message.startswith("--data:1:1: data.dataset: no such file or folder: ")
    assert f"no such file or folder: {expected} " in message
    assert "relative to the current folder" in message and "Hugging Face" not in message


def test_a_missing_hub_shaped_data_path_says_the_local_path_is_missing_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    message = error_of(folder_recipe(tmp_path), data="mydata")
    assert f"no such file or folder: {tmp_path / 'mydata'}" in message
    assert "read from the Hugging Face hub, which cannot be reached" in message


def test_a_missing_hub_dataset_when_the_hub_answers_also_names_the_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    def not_found(*args: object, **kwargs: object) -> None:
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'someone/sst2' doesn't exist on the Hub")

    monkeypatch.setattr(hub, "unreachable_reason", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", not_found)
    path = folder_recipe(tmp_path, dataset="someone/sst2")
    message = error_of(path)
    assert f"no such file or folder: {tmp_path / 'someone' / 'sst2'}" in message
    assert "doesn't exist on the Hub" in message


def test_a_missing_data_dataset_is_relative_to_the_recipe(tmp_path: Path) -> None:
    path = folder_recipe(tmp_path, dataset="../elsewhere/rows.csv")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'dataset:')}:")
    assert f"no such file or folder: {tmp_path / '..' / 'elsewhere' / 'rows.csv'}" in message
    assert f"relative to the recipe's folder, {tmp_path}" in message


def test_a_missing_data_path_through_the_cli_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(folder_recipe(tmp_path)), "--data", str(tmp_path / "no" / "data")])
    assert result.exit_code == 2, result.output
    assert "no such file or folder" in result.output and "Traceback" not in result.output


# --- 3. empty files -------------------------------------------------------------------------------


def test_an_empty_parquet_file_is_an_empty_split(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=3)
    empty = tmp_path / "data" / "validation.parquet"
    shutil.copy(FIXTURES / "empty.parquet", empty)
    message = error_of(folder_recipe(tmp_path))
    assert message == f"{empty}: the 'validation' split has no rows (an empty split)"


@pytest.mark.parametrize(
    ("name", "text"), [("rows.json", "[]\n"), ("rows.csv", "text,label\n"), ("rows.jsonl", "\n\n")]
)
def test_a_text_file_without_rows_is_an_empty_split(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    message = error_of(folder_recipe(tmp_path, dataset=name))
    assert message == f"{tmp_path / name}: the 'train' split has no rows (an empty split)"


def test_an_empty_part_of_a_split_is_named(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "parts", tmp_path / "data")
    part = tmp_path / "data" / "train-part2.jsonl"
    part.write_text("", encoding="utf-8")
    message = error_of(folder_recipe(tmp_path))
    assert message.startswith(f"{part}: no rows: an empty file among the 'train' split's files")


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "rows.parquet").write_text("text,label\nfine,1\n", encoding="utf-8")
    message = error_of(folder_recipe(tmp_path, dataset="rows.parquet"))
    assert message.startswith(f"{tmp_path / 'rows.parquet'}: not a Parquet file")


# --- 4. paths that cannot be read -----------------------------------------------------------------


def test_a_folder_where_a_split_file_is_expected(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=3)
    (tmp_path / "data" / "validation.jsonl").mkdir()
    message = error_of(folder_recipe(tmp_path))
    assert message.startswith(f"{tmp_path / 'data' / 'validation.jsonl'}: a folder, not a data file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=3)
    os.mkfifo(tmp_path / "data" / "validation.jsonl")
    message = error_of(folder_recipe(tmp_path))
    assert message.startswith(f"{tmp_path / 'data' / 'validation.jsonl'}: a FIFO, not a data file")
    os.mkfifo(tmp_path / "rows.jsonl")
    path = folder_recipe(tmp_path, dataset="rows.jsonl")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'dataset:')}:")
    assert f"{tmp_path / 'rows.jsonl'}: a FIFO, not a data file or folder" in message


def test_a_dangling_symbolic_link(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=3)
    (tmp_path / "data" / "validation.jsonl").symlink_to(tmp_path / "gone.jsonl")
    message = error_of(folder_recipe(tmp_path))
    assert message.startswith(
        f"{tmp_path / 'data' / 'validation.jsonl'}: a symbolic link to {tmp_path / 'gone.jsonl'}, which does not exist"
    )
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    message = error_of(folder_recipe(tmp_path, dataset="link"))
    assert f"{tmp_path / 'link'}: a symbolic link to {tmp_path / 'gone'}, which does not exist" in message


def test_a_file_used_as_a_folder(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(4))
    message = error_of(folder_recipe(tmp_path, dataset="rows.jsonl/train.jsonl"))
    assert f"no such file or folder: {tmp_path / 'rows.jsonl' / 'train.jsonl'}" in message
    assert f"{tmp_path / 'rows.jsonl'} is a file, not a folder" in message


def test_unreadable_paths_through_the_cli_exit_2(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=3)
    (tmp_path / "data" / "validation.jsonl").mkdir()
    result = runner.invoke(app, ["plan", str(folder_recipe(tmp_path))])
    assert result.exit_code == 2, result.output
    assert "a folder, not a data file" in result.output and "Traceback" not in result.output


# --- 5. a max length that cuts most validation rows -----------------------------------------------


def long_validation(tmp_path: Path, evaluation_split: str = "validation") -> Path:
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", [{"text": "short", "label": i % 2} for i in range(4)])
    long_rows = [{"text": " ".join(["word"] * 30) + f" {i}", "label": i % 2} for i in range(6)]
    write_jsonl(data / "validation.jsonl", long_rows)
    write_jsonl(data / "test.jsonl", long_rows)
    return folder_recipe(tmp_path, evaluation_split=evaluation_split)


def test_a_max_length_that_truncates_most_validation_rows_is_a_warning(tmp_path: Path) -> None:
    report = prepare_training_data(load(long_validation(tmp_path)), WordTokenizer()).report
    assert report["splits"]["validation"]["truncated_rows"] == 6
    [warning] = [w for w in report["warnings"] if "validation rows" in w]
    assert warning.startswith("6 of the 6 validation rows (100%) are longer than max_length")
    assert "the p95 of 4 training rows" in warning
    assert "preprocessing.global_max_sequence_length" in warning


def test_a_max_length_shorter_than_most_evaluation_rows_is_a_warning(tmp_path: Path) -> None:
    report = prepare_training_data(load(long_validation(tmp_path, "test")), WordTokenizer()).report
    assert any(w.startswith("6 of the first 6 test rows (the evaluation subset)") for w in report["warnings"])


def test_a_max_length_that_fits_validation_warns_nothing(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=40, validation=6, test=6)
    report = prepare_training_data(load(folder_recipe(tmp_path)), WordTokenizer()).report
    assert not [w for w in report["warnings"] if "longer than max_length" in w]


def test_plan_prints_the_truncation_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "unreachable_reason", lambda: "https://huggingface.co did not answer")
    monkeypatch.setattr(hub, "cached_snapshot", lambda *args: None)
    result = runner.invoke(app, ["plan", str(long_validation(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "## warnings" in result.output and "validation rows (100%) are longer than max_length" in result.output


# --- 6. splits the source lacks are carved from train ---------------------------------------------


def test_a_folder_without_validation_carves_it_from_train_and_says_so(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=40, validation=0, test=6)
    recipe = sentiment_recipe()
    recipe["data"] = {"dataset": "data"}  # a newcomer's recipe: evaluation on test, nothing else said
    compiled = compile_data(load(write_recipe(tmp_path, recipe)))
    assert {n: s.rows for n, s in compiled.splits.items()} == {"train": 38, "validation": 2, "test": 6}
    assert compiled.splits["validation"].origin.startswith(f"carved from {tmp_path / 'data' / 'train.jsonl'}: 5%")
    [note] = [n for n in compiled.notes if "carved" in n]
    assert note.startswith("the source has no 'validation' split (it has: test, train), so 5% of train was carved")
    assert "data.splits.validation" in note


def test_the_data_report_and_plan_say_what_was_carved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sentiment_folder(tmp_path, train=40, validation=0, test=6)
    recipe = sentiment_recipe()
    recipe["data"] = {"dataset": "data"}
    path = write_recipe(tmp_path, recipe)
    report = prepare_training_data(load(path), WordTokenizer()).report
    assert report["splits"]["validation"]["carved_fraction"] == 0.05
    assert report["splits"]["train"]["carved_fraction"] is None and report["splits"]["test"]["carved_fraction"] is None
    monkeypatch.setattr(hub, "unreachable_reason", lambda: "https://huggingface.co did not answer")
    monkeypatch.setattr(hub, "cached_snapshot", lambda *args: None)
    result = runner.invoke(app, ["plan", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["splits"]["validation"]["from"].startswith(f"carved from {tmp_path / 'data' / 'train.jsonl'}: 5%")
    assert plan["splits"]["validation"]["carved_fraction"] == 0.05
    assert any("so 5% of train was carved into validation" in w for w in plan["warnings"])
    text = runner.invoke(app, ["plan", str(path)]).output
    assert "carved from" in text and "so 5% of train was carved" in text


def test_a_single_file_carves_validation_and_test(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", sentiment_rows(100))
    compiled = compile_data(load(folder_recipe(tmp_path, dataset="rows.jsonl")))
    assert {n: s.rows for n, s in compiled.splits.items()} == {"train": 85, "validation": 5, "test": 10}


def test_a_misspelt_split_file_is_suggested_when_carving(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=40, validation=0, test=6)
    write_jsonl(tmp_path / "data" / "valdation.jsonl", sentiment_rows(3, start=500))
    compiled = compile_data(load(folder_recipe(tmp_path, evaluation_split="test")))
    [note] = [n for n in compiled.notes if "carved" in n]
    assert "(it has: test, train, valdation)" in note and "did you mean 'valdation'?" in note


def test_a_split_named_in_the_recipe_must_exist(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=40, validation=0, test=6)
    path = folder_recipe(tmp_path, splits={"validation": "validation"})
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'validation: validation')}:")
    assert "has no 'validation' split (it has: test, train)" in message


def test_a_missing_evaluation_split_with_no_fraction_is_an_error(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=40, validation=6, test=0)
    path = folder_recipe(tmp_path, evaluation_split="test", split={"test_fraction": 0})
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'test_fraction')}:")
    assert "the source has no 'test' split to evaluate" in message
