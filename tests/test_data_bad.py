"""Bad data: each case is one clear message naming file, row and column (or the recipe line), or a
counted skip; never a traceback (see lora_recipes/data/problems.py for the rule)."""

from __future__ import annotations

import subprocess
import sys
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
    write_csv,
    write_jsonl,
    write_recipe,
)
from lora_recipes.cli import app
from lora_recipes.data import hub
from lora_recipes.data.pipeline import compile_data, prepare_training_data
from lora_recipes.errors import UserError

runner = CliRunner()


def single_file_recipe(tmp_path: Path, dataset: str, **output) -> Path:
    recipe = sentiment_recipe()
    if output:
        recipe["output"] = output
    recipe["data"] = {
        "dataset": dataset,
        "splits": {"validation": None, "test": None},
        "split": {"validation_fraction": 0.2, "test_fraction": 0},
        "evaluation_split": "validation",
    }
    return write_recipe(tmp_path, recipe)


def error_of(path: Path, *sets: str) -> str:
    with pytest.raises(UserError) as err:
        compile_data(load(path, *sets))
    return str(err.value)


def test_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b'{"text": "fine", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
    message = error_of(single_file_recipe(tmp_path, "rows.jsonl"))
    assert (
        message
        == f"{data}: line 2, byte 14: 0xe9 is not UTF-8 text (save the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"
    )


@pytest.mark.parametrize(("row", "fields"), [(["only text"], 1), (["a", "0", "surplus"], 3)])
def test_ragged_csv_rows(tmp_path: Path, row: list[str], fields: int) -> None:
    data = write_csv(tmp_path / "rows.csv", ["text", "label"], [["good", 1], row, ["bad", 0]])
    message = error_of(single_file_recipe(tmp_path, "rows.csv"))
    assert message.startswith(f"{data}: line 3 (row 2): {fields} fields, but the header has 2 (text, label)")


def test_a_line_that_is_not_json(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "fine", "label": 0}\n{"text": "broken", "label": }\n', encoding="utf-8")
    recipe = single_file_recipe(tmp_path, "rows.jsonl")
    message = error_of(recipe)
    assert message.startswith(f"{data}: line 2, character 29: not JSON (Expecting value)")
    # In a real process (pytest's log capture would hide it): one error, not datasets' log line first.
    done = subprocess.run([sys.executable, "-m", "lora_recipes", "plan", str(recipe)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {message}", done.stderr


def test_null_and_empty_targets_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = sentiment_rows(20)
    rows[2]["label"] = None
    rows[5]["label"] = ""
    write_jsonl(tmp_path / "rows.jsonl", rows)
    text_rows = [{"text": f"q{i}", "answer": "   " if i == 1 else f"a{i}"} for i in range(6)]
    write_jsonl(tmp_path / "text.jsonl", text_rows)
    compiled = compile_data(load(single_file_recipe(tmp_path, "rows.jsonl")))
    assert compiled.splits["train"].skipped_rows == 2
    assert compiled.splits["train"].rows + compiled.splits["validation"].rows == 18
    assert "2 train rows have no target (null or empty) and were skipped" in compiled.notes
    text = compile_data(load(single_file_recipe(tmp_path, "text.jsonl", column="answer")))
    assert text.splits["train"].skipped_rows == 1


def test_an_empty_split_file(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=0)
    (tmp_path / "data" / "validation.jsonl").write_text("", encoding="utf-8")
    recipe = sentiment_recipe()
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0})
    message = error_of(write_recipe(tmp_path, recipe))
    assert message == f"{tmp_path / 'data' / 'validation.jsonl'}: the 'validation' split has no rows (an empty split)"


def test_a_split_left_empty_by_skipping(tmp_path: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=0, test=0)
    write_jsonl(tmp_path / "data" / "validation.jsonl", [{"text": "x", "label": None}, {"text": "y", "label": None}])
    recipe = sentiment_recipe()
    recipe["data"].update(splits={"test": None}, split={"test_fraction": 0})
    message = error_of(write_recipe(tmp_path, recipe))
    assert "the validation split is empty" in message and "2 rows without a target were skipped" in message


def test_labels_outside_the_label_set(tmp_path: Path) -> None:
    rows = sentiment_rows(10)
    rows[4]["label"] = 2
    rows[7]["label"] = "neutral"
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    path = single_file_recipe(tmp_path, "rows.jsonl")
    message = error_of(path)
    assert message.startswith(f"{data}: row 5, column 'label': '2' is not one of output.labels (negative, positive)")
    assert "2 rows hold such values ('2', 'neutral')" in message
    assert f"map them in output.label_map at {path}:{line_of(path, 'label_map:')}:" in message


def test_a_missing_output_column_points_at_the_recipe(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "x", "sentiment": 1}] * 5)
    path = single_file_recipe(tmp_path, "rows.jsonl", column="label", type="category", labels=["negative", "positive"])
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'column: label')}:")
    assert "'label' is not a column of" in message and "columns: sentiment, text" in message


def test_a_missing_data_path_points_at_data_dataset(tmp_path: Path) -> None:
    path = single_file_recipe(tmp_path, "./nowhere/rows.csv")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'dataset:')}:")
    assert f"no such file or folder: {tmp_path / 'nowhere' / 'rows.csv'}" in message
    assert "--data PATH" in message


def test_a_hub_dataset_offline_says_so_and_shows_data_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "unreachable_reason", lambda: "https://huggingface.co did not answer")
    monkeypatch.setattr(hub, "offline_mode", lambda: False)
    path = single_file_recipe(tmp_path, "glue")
    result = runner.invoke(app, ["plan", str(path), "--set", "data.config=sst2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "glue (config sst2) is read from the Hugging Face hub, which cannot be reached" in result.output
    assert "point --data at it: --data PATH" in result.output


def test_bad_data_through_the_cli_exits_2_without_a_traceback(tmp_path: Path) -> None:
    write_csv(tmp_path / "rows.csv", ["text", "label"], [["good", 1], ["ragged"]])
    result = runner.invoke(app, ["plan", str(single_file_recipe(tmp_path, "rows.csv")), "--format", "json"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "line 3 (row 2)" in result.output
    assert "Traceback" not in result.output


def test_every_training_row_dropped_is_an_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "q", "answer": "a b c d e f g h"}] * 4)
    path = single_file_recipe(tmp_path, "rows.jsonl", column="answer")
    with pytest.raises(UserError, match="every training row was dropped"):
        prepare_training_data(load(path, "preprocessing.global_max_sequence_length=8"), WordTokenizer())
