"""Helpers for the data pipeline tests: small data files and recipes written on the spot."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lora_recipes.recipe.loader import LoadedRecipe, load_recipe

SENTIMENT_TEMPLATE = "Review: {text}\nSentiment:"


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sentiment_rows(n: int, start: int = 0, positive_every: int = 2) -> list[dict[str, Any]]:
    """Distinct reviews; every `positive_every`-th one is positive (label 1)."""
    return [
        {
            "text": f"review number {i} says {'great' if i % positive_every == 0 else 'dull'} things",
            "label": 1 if i % positive_every == 0 else 0,
        }
        for i in range(start, start + n)
    ]


def sentiment_recipe(**overrides: Any) -> dict[str, Any]:
    """A category recipe over `text`/`label`; `overrides` replace whole top-level sections."""
    recipe: dict[str, Any] = {
        "version": 1,
        "name": "sentiment",
        "base_model": "mistralai/Mistral-7B-v0.1",
        "prompt": {"template": SENTIMENT_TEMPLATE},
        "output": {
            "column": "label",
            "type": "category",
            "labels": ["negative", "positive"],
            "label_map": {"0": "negative", "1": "positive"},
        },
        "data": {"dataset": "data", "evaluation_split": "validation"},
    }
    recipe.update(overrides)
    return recipe


def write_recipe(folder: Path, recipe: Mapping[str, Any], name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(dict(recipe), sort_keys=False), encoding="utf-8")
    return path


def sentiment_folder(folder: Path, train: int = 40, validation: int = 6, test: int = 6) -> Path:
    data = folder / "data"
    write_jsonl(data / "train.jsonl", sentiment_rows(train))
    if validation:
        write_jsonl(data / "validation.jsonl", sentiment_rows(validation, start=10_000))
    if test:
        write_jsonl(data / "test.jsonl", sentiment_rows(test, start=20_000))
    return data


def load(path: Path, *sets: str, data: str | None = None) -> LoadedRecipe:
    return load_recipe(path, sets, data)


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line of `path` containing `text`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


class WordTokenizer:
    """A tokenizer whose lengths are obvious: one token per space-separated word, BOS before every
    prompt. Token ids are word lengths + 10 (ids 1 and 2 are BOS and EOS)."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0
    name_or_path = "words"
    identity = "words-1"

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        def ids(text: str) -> list[int]:
            return ([self.bos_token_id] if add_special_tokens else []) + [10 + len(w) for w in text.split()]

        return {"input_ids": ids(texts) if isinstance(texts, str) else [ids(t) for t in texts]}
