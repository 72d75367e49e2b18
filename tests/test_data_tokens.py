"""Tokenization, the max-length cut-off, loss masking and the tokenized-data cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from data_helpers import (
    WordTokenizer,
    load,
    sentiment_folder,
    sentiment_recipe,
    sentiment_rows,
    write_jsonl,
    write_recipe,
)
from lora_recipes.data import cache
from lora_recipes.data.pipeline import prepare_training_data
from lora_recipes.data.tokens import (
    batch_encoder,
    computed_tokens,
    fit,
    percentile,
    resolve_max_length,
    tokenizer_identity,
)
from lora_recipes.data.types import IGNORE_INDEX
from lora_recipes.model.source import ModelSource


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path):
    from lora_recipes.model.loading import load_tokenizer

    return load_tokenizer(ModelSource("local", str(tiny_model_dir), None))


# --- arithmetic on known lengths -----------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (1, 50, 95, 99, 100)] == [1, 50, 95, 99, 100]
    skewed = [10] * 19 + [100]  # 95% of the rows are 10 long
    assert percentile(skewed, 95) == 10
    assert percentile(skewed, 96) == 100
    assert resolve_max_length("p95", [5, 3, 9, 7]) == 9  # ceil(0.95 * 4) = 4th of 3,5,7,9
    assert resolve_max_length("p50", [5, 3, 9, 7]) == 5
    assert resolve_max_length(64, [5, 3, 9, 7]) == 64


def test_fit_keeps_rows_that_fit_and_cuts_the_prompt_from_the_left() -> None:
    prompt = [1, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # BOS + 9 tokens
    answer = [31, 32, 2]
    assert fit(prompt, answer, 13, head=1) == (prompt + answer, 10)
    ids, p = fit(prompt, answer, 8, head=1)  # room for 5 prompt tokens: BOS + the last 4
    assert ids == [1, 16, 17, 18, 19, 31, 32, 2] and p == 5
    ids, p = fit(prompt, answer, 8, head=0)  # no BOS to keep: the last 5
    assert ids == [15, 16, 17, 18, 19, 31, 32, 2] and p == 5


def test_fit_drops_a_row_whose_answer_leaves_no_room_for_the_prompt() -> None:
    prompt, answer = [1, 11, 12], [31, 32, 33, 2]
    assert fit(prompt, answer, 4, head=1) is None  # answer alone fills the limit
    assert fit(prompt, answer, 3, head=1) is None  # answer alone exceeds it
    assert fit(prompt, answer, 5, head=1) == ([1, 31, 32, 33, 2], 1)  # only BOS is left of the prompt


def test_computed_tokens_pad_each_batch_to_its_longest_row() -> None:
    lengths = [5, 1, 4, 2]
    assert computed_tokens(lengths, 1, group_by_length=True) == 12
    assert computed_tokens(lengths, 2, group_by_length=False) == 2 * 5 + 2 * 4  # (5,1) (4,2)
    assert computed_tokens(lengths, 2, group_by_length=True) == 2 * 2 + 2 * 5  # (1,2) (4,5)


def test_cut_off_counts_on_known_lengths(tmp_path: Path) -> None:
    # Prompts of 1..10 words (+ "Sentiment:" and BOS); answers " positive"/" negative" + EOS = 2 tokens.
    rows = [{"text": " ".join(["w"] * n), "label": n % 2} for n in range(1, 11)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "validation.jsonl", rows[:2])
    recipe = sentiment_recipe(preprocessing={"global_max_sequence_length": "p50"})
    recipe["prompt"] = {"template": "{text} Sentiment:"}
    recipe["data"]["splits"] = {"test": None}
    recipe["data"]["split"] = {"test_fraction": 0}
    loaded = load(write_recipe(tmp_path, recipe))
    prepared = prepare_training_data(loaded, WordTokenizer())
    # Totals are n + 2 (BOS, "Sentiment:") + 2 (answer, EOS) = 5..14; the nearest-rank p50 is 9.
    assert prepared.max_length == 9
    assert prepared.report["tokens"]["total"] == {"min": 5, "p50": 9, "p95": 14, "p99": 14, "max": 14, "mean": 9.5}
    assert prepared.train.truncated_rows == 5 and prepared.train.dropped_rows == 0
    assert prepared.train.lengths == [5, 6, 7, 8, 9, 9, 9, 9, 9, 9]
    # The longest row (10 words, label 0) keeps BOS, the last 6 prompt tokens and the whole answer.
    assert prepared.train.input_ids[-1] == [1, *[11] * 5, 10 + len("Sentiment:"), 10 + len("negative"), 2]
    assert prepared.train.prompt_lengths[-1] == 7


def test_rows_with_answers_too_long_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [{"text": "a b c", "answer": " ".join(["x"] * n)} for n in (1, 2, 9)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    recipe = sentiment_recipe(output={"column": "answer"}, preprocessing={"global_max_sequence_length": 10})
    recipe["data"] = {
        "dataset": "data",
        "splits": {"validation": None, "test": None},
        "split": {"validation_fraction": 0, "test_fraction": 0},
        "evaluation_split": "train",
    }
    prepared = prepare_training_data(load(write_recipe(tmp_path, recipe)), WordTokenizer())
    # The 9-word answer + EOS is 10 tokens: no prompt token fits, so the row is dropped.
    assert prepared.train.dropped_rows == 1 and len(prepared.train) == 2
    assert prepared.train.rows == [0, 1]
    assert prepared.report["dropped_rows"] == 1
    assert any("dropped" in w for w in prepared.report["warnings"])


# --- masking with the real (tiny) tokenizer ----------------------------------------------------


@pytest.mark.slow
def test_labels_mask_the_prompt_and_cover_answer_and_eos(tmp_path: Path, tiny_tokenizer) -> None:
    sentiment_folder(tmp_path, train=12, validation=3, test=0)
    recipe = sentiment_recipe()
    recipe["data"]["splits"] = {"test": None}
    recipe["data"]["split"] = {"test_fraction": 0}
    prepared = prepare_training_data(load(write_recipe(tmp_path, recipe)), tiny_tokenizer)
    train = prepared.train
    assert len(train) == 12 and prepared.validation is not None and len(prepared.validation) == 3
    for i in range(len(train)):
        labels = train.labels(i)
        p = train.prompt_lengths[i]
        assert labels[:p] == [IGNORE_INDEX] * p
        answer = labels[p:]
        assert IGNORE_INDEX not in answer and answer[-1] == tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode(answer[:-1]) in (" positive", " negative")
        prompt_text = tiny_tokenizer.decode(train.input_ids[i][:p])
        assert prompt_text.startswith("Review: review number") and prompt_text.endswith("Sentiment:")


# --- the cache ----------------------------------------------------------------------------------


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of the test's own: the session cache may already hold the same key, written by
    another test that prepared the same rows with the same tokenizer."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LORA_RECIPES_CACHE", str(root))
    return root


def _prepared_state(tmp_path: Path, tokenizer, **recipe_changes) -> tuple[str, list[list[int]]]:
    recipe = sentiment_recipe(**recipe_changes)
    recipe["data"]["splits"] = {"test": None}
    recipe["data"]["split"] = {"test_fraction": 0}
    prepared = prepare_training_data(load(write_recipe(tmp_path, recipe)), tokenizer)
    return prepared.report["data"]["cache"], prepared.train.input_ids


@pytest.mark.slow
def test_cache_is_reused_and_never_stale(tmp_path: Path, tiny_tokenizer, own_cache: Path) -> None:
    data = sentiment_folder(tmp_path, train=20, validation=4, test=0)
    state, first = _prepared_state(tmp_path, tiny_tokenizer)
    assert state == "written"
    state, again = _prepared_state(tmp_path, tiny_tokenizer)
    assert state == "reused" and again == first

    # The template changes: new prompts, a new key.
    state, other = _prepared_state(tmp_path, tiny_tokenizer, prompt={"template": "Text: {text}\nLabel:"})
    assert state == "written" and other != first

    # The data changes (same file name, one row different).
    rows = sentiment_rows(20)
    rows[3]["text"] = "a completely different review"
    write_jsonl(data / "train.jsonl", rows)
    state, changed = _prepared_state(tmp_path, tiny_tokenizer)
    assert state == "written" and changed[3] != first[3]

    # A different tokenizer.
    state, words = _prepared_state(tmp_path, WordTokenizer())
    assert state == "written" and words != changed

    # The max-length setting.
    state, _ = _prepared_state(tmp_path, tiny_tokenizer, preprocessing={"global_max_sequence_length": 12})
    assert state == "written"


@pytest.mark.slow
def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path: Path, tiny_tokenizer, own_cache: Path) -> None:
    sentiment_folder(tmp_path, train=10, validation=2, test=0)
    state, first = _prepared_state(tmp_path, tiny_tokenizer, prompt={"template": "Damaged? {text} ->"})
    assert state == "written"
    files = sorted(cache.cache_dir().glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    newest = files[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    state, again = _prepared_state(tmp_path, tiny_tokenizer, prompt={"template": "Damaged? {text} ->"})
    assert state == "written" and again == first
    assert not list(cache.cache_dir().glob(".writing-*"))  # no temporary files left behind


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_cache_files_get_the_umask_s_mode(tmp_path: Path, tiny_tokenizer, own_cache: Path, umask: int) -> None:
    """A cache shared by a team (LORA_RECIPES_CACHE on a common disk) is readable by the others
    when the umask allows it, not 0600 as a temporary file starts."""
    sentiment_folder(tmp_path, train=6, validation=2, test=0)
    old = os.umask(umask)
    try:
        state, _ = _prepared_state(tmp_path, tiny_tokenizer, prompt={"template": f"Mode {umask:o}: {{text}} ->"})
    finally:
        os.umask(old)
    assert state == "written"
    (written,) = cache.cache_dir().glob("*.safetensors")
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.slow
def test_tokenizer_identity_ignores_where_it_was_loaded_from(tmp_path: Path, tiny_model_dir: Path) -> None:
    from lora_recipes.model.loading import load_tokenizer

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    a = load_tokenizer(ModelSource("local", str(tiny_model_dir), None))
    b = load_tokenizer(ModelSource("local", str(copy), None))
    assert tokenizer_identity(a) == tokenizer_identity(b)
    assert tokenizer_identity(a) != tokenizer_identity(WordTokenizer())


@pytest.mark.slow
def test_direct_encoding_matches_the_tokenizer_and_steps_aside_for_truncation(tiny_model_dir: Path) -> None:
    from lora_recipes.model.loading import load_tokenizer

    texts = ["Review: the movie was great\nSentiment:", " positive", "a dull , lifeless film"]
    tokenizer = load_tokenizer(ModelSource("local", str(tiny_model_dir), None))
    run = batch_encoder(tokenizer, texts)
    assert run.__name__ == "direct"
    assert run(texts, True) == tokenizer(texts)["input_ids"]
    assert run(texts, False) == tokenizer(texts, add_special_tokens=False)["input_ids"]
    tokenizer.backend_tokenizer.enable_truncation(4)  # set by hand: the backend alone would cut rows
    assert batch_encoder(tokenizer, texts).__name__ == "wrapper"
