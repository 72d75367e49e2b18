"""`predict`: JSONL rows in, the recipe's prompt applied, each row back with its `prediction`.

Rows are read and answered a few batches at a time, so a long input streams through without being
held in memory, and standard output shows answers as they come.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lora_recipes.atomic import atomic_open
from lora_recipes.errors import UserError
from lora_recipes.recipe.loader import LoadedRecipe

CHUNK_BATCHES = 8  # batches read ahead: enough to sort by length, little to hold


def read_rows(lines: Iterable[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of every non-blank JSONL line; a line that is not a JSON object is the
    user's mistake, reported with its number."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source}:{number}: not valid JSON ({exc.msg}); give one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{source}:{number}: a {type(row).__name__}, not a JSON object; give one object per line")
        yield number, row


def _prompts(
    prompter: Callable[[Mapping[str, Any]], str], chunk: list[tuple[int, dict[str, Any]]], source: str
) -> list[str]:
    prompts = []
    for number, row in chunk:
        try:
            prompts.append(prompter(row))
        except UserError as exc:
            raise UserError(f"{source}:{number}: {exc}") from None
    return prompts


def predict(
    loaded: LoadedRecipe,
    model: Any,
    tokenizer: Any,
    rows: Iterable[tuple[int, dict[str, Any]]],
    out: IO[str],
    source: str,
    prompter: Callable[[Mapping[str, Any]], str],
) -> int:
    """Write every row with its prediction to `out`; returns how many were written."""
    from lora_recipes.evaluation.evaluate import answer_local

    recipe = loaded.recipe
    chunk_size = recipe.evaluation.batch_size * CHUNK_BATCHES
    written = 0
    chunk: list[tuple[int, dict[str, Any]]] = []

    def flush() -> None:
        nonlocal written
        prompts = _prompts(prompter, chunk, source)
        answers: list[dict[str, Any]] = [{} for _ in chunk]

        def collect(indices: list[int], records: list[dict[str, Any]]) -> None:
            for i, record in zip(indices, records, strict=True):
                answers[i] = record

        answer_local(model, tokenizer, recipe, prompts, collect)
        for (_, row), answer in zip(chunk, answers, strict=True):
            out.write(json.dumps({**row, "prediction": answer["prediction"]}, ensure_ascii=False) + "\n")
        out.flush()
        written += len(chunk)
        chunk.clear()

    for item in rows:
        chunk.append(item)
        if len(chunk) >= chunk_size:
            flush()
    if chunk:
        flush()
    return written


def predict_recipe(
    recipe_path: Path, *, overrides: Sequence[str], adapter: Path, input_path: str, output_path: str
) -> int:
    """What `lora-recipes predict` does: `-` is standard input or output. A file is written to a
    temporary name beside it and renamed when complete."""
    from lora_recipes.data.pipeline import build_prompter
    from lora_recipes.evaluation.evaluate import find_adapter, load_local
    from lora_recipes.model import loading as models
    from lora_recipes.recipe.loader import load_recipe

    loaded = load_recipe(recipe_path, overrides)
    adapter_dir, _ = find_adapter(adapter)
    prompter = build_prompter(loaded)
    if input_path != "-" and not Path(input_path).is_file():
        raise UserError(f"--input {input_path}: no such file")
    model, tokenizer = load_local(loaded)
    model = models.load_adapter(model, adapter_dir)
    source = "<stdin>" if input_path == "-" else input_path
    with contextlib.ExitStack() as stack:
        lines = sys.stdin if input_path == "-" else stack.enter_context(open(input_path, encoding="utf-8"))
        rows = read_rows(lines, source)
        if output_path == "-":
            return predict(loaded, model, tokenizer, rows, sys.stdout, source, prompter)
        with atomic_open(Path(output_path)) as out:
            return predict(loaded, model, tokenizer, rows, out, source, prompter)
