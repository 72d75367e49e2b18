"""From a recipe and its data to what training, evaluation, prediction and `plan` consume.

    source splits (sources.py) -> derived columns (columns.py) -> targets, bad-data checks
    (problems.py) -> train/validation/test (splits.py: published, carved by row hash, or a split
    column; a split the source lacks is carved unless the recipe named it) -> row caps
    -> few-shot examples -> prompts and targets (prompts.py)
      -> `evaluation_examples`: the fixed evaluation subset, as text
      -> `prepare_training_data`: raw text or chat turns (chat.py), token ids cut to the max
         length (tokens.py), cached (cache.py)

Order matters in two places: caps take the first N rows of each finished split, in source order;
retrieved few-shot rows are drawn (with the recipe seed) from the capped training split and then
leave it. Splits that neither training nor evaluation reads (test, when the evaluation split is
validation) are counted and hashed but not otherwise checked: a hidden-label test split is fine.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lora_recipes.data.approx import ApproximateTokenizer
from lora_recipes.data.chat import PromptFormat, prompt_format
from lora_recipes.data.columns import OPS as COLUMN_OPS
from lora_recipes.data.columns import ColumnProblem, columns_read, has_field, spec_problem
from lora_recipes.data.problems import did_you_mean, listing, recipe_error, recipe_location, row_error
from lora_recipes.data.prompts import PromptCompiler, UnknownLabel, target_text
from lora_recipes.data.sources import Source, SourceSplit, load_source
from lora_recipes.data.splits import SPLIT_NAMES, cap, carve, row_hash, split_code, split_hash
from lora_recipes.data.tokens import (
    Encoded,
    computed_tokens,
    cut_split,
    encode,
    length_stats,
    resolve_max_length,
    special_tokens,
    tokenizer_identity,
    tokenizer_name,
)
from lora_recipes.data.types import EvaluationSet, Example, PreparedData, TokenizedSplit
from lora_recipes.errors import UserError
from lora_recipes.model.source import ModelSource, recipe_model_source
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.recipe.types import Recipe

# Bump when a change here or in tokens.py changes what a cached tokenization would hold.
PIPELINE_VERSION = 1


@dataclass
class SourceRows:
    """One source split after derived columns: rows, their content hashes and targets."""

    split: SourceSplit
    rows: list[dict[str, Any]]
    hashes: list[str]  # of the source fields, before derived columns
    targets: list[str | None] | None  # None for a split nothing reads


@dataclass
class CompiledSplit:
    name: str  # train, validation or test
    origin: str  # where its rows come from, in words
    used: bool  # read by training or evaluation
    rows: int  # rows in the split (after skips, caps and few-shot draws)
    prompts: list[str]
    targets: list[str]
    hash: str
    skipped_rows: int = 0  # no target
    capped_rows: int = 0  # beyond data.max_rows
    carved_fraction: float | None = None  # the share of train carved into it, when carved by row hash


@dataclass
class CompiledData:
    source: Source
    compiler: PromptCompiler  # few-shot block included
    splits: dict[str, CompiledSplit]
    few_shot: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- compiling rows into prompts ------------------------------------------------------------------


def used_splits(recipe: Recipe) -> set[str]:
    return {"train", "validation", recipe.data.evaluation_split}


def check_column_specs(loaded: LoadedRecipe) -> None:
    for name, spec in loaded.recipe.data.columns.items():
        problem = spec_problem(spec)
        if problem:
            raise recipe_error(loaded, ("data", "columns", name), problem[1], f"add {problem[0]}: COLUMN")


def derive_columns(loaded: LoadedRecipe, split: SourceSplit) -> list[dict[str, Any]]:
    specs = loaded.recipe.data.columns
    if not specs:
        return split.rows
    present = set(split.rows[0])
    for name, spec in specs.items():
        for column in columns_read(spec):
            if column.split(".")[0] not in present and column not in present:
                raise recipe_error(
                    loaded,
                    ("data", "columns", name),
                    f"reads the column {column!r}, which {split.where} does not have",
                    f"{did_you_mean(column.split('.')[0], present)}columns: {listing(sorted(present))}",
                )
        present.add(name)
    out = []
    for i, source_row in enumerate(split.rows):
        row = dict(source_row)
        for name, spec in specs.items():
            try:
                row[name] = COLUMN_OPS[spec.op](row, spec)
            except ColumnProblem as exc:
                at = recipe_location(loaded, ("data", "columns", name))
                raise row_error(*split.place(i), exc.column, f"data.columns.{name} ({at}): {exc.message}") from None
        out.append(row)
    return out


def check_columns(
    loaded: LoadedRecipe, split: SourceSplit, rows: list[dict[str, Any]], compiler: PromptCompiler
) -> None:
    present = set(rows[0])
    for column in compiler.template.columns:
        if column not in present:
            raise recipe_error(
                loaded,
                ("prompt", "template"),
                f"{{{column}}} names a column that {split.where} does not have",
                f"{did_you_mean(column, present)}columns: {listing(sorted(present))}",
            )
    output = loaded.recipe.output.column
    if output not in present:
        raise recipe_error(
            loaded,
            ("output", "column"),
            f"{output!r} is not a column of {split.where}",
            f"{did_you_mean(output, present)}columns: {listing(sorted(present))}",
        )


def targets_of(loaded: LoadedRecipe, split: SourceSplit, rows: list[dict[str, Any]]) -> list[str | None]:
    output = loaded.recipe.output
    targets: list[str | None] = []
    unknown: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        try:
            targets.append(target_text(row[output.column], output))
        except UnknownLabel as exc:
            unknown.append((i, exc.key))
            targets.append(None)
    if unknown:
        first_row, first = unknown[0]
        values = sorted({k for _, k in unknown})
        raise row_error(
            *split.place(first_row),
            output.column,
            f"{first!r} is not one of output.labels ({', '.join(output.labels)}) and output.label_map does not map it; "
            f"{len(unknown)} {'rows hold' if len(unknown) != 1 else 'row holds'} such values"
            f" ({listing(map(repr, values), 8)})",
            f"map them in output.label_map at {recipe_location(loaded, ('output', 'label_map'))}, or remove those rows",
        )
    return targets


def read_source_rows(loaded: LoadedRecipe, split: SourceSplit, compiler: PromptCompiler, used: bool) -> SourceRows:
    if not split.rows:
        raise UserError(f"{split.where}: the {split.name!r} split has no rows (an empty split)")
    hashes = [row_hash(r) for r in split.rows]
    rows = derive_columns(loaded, split)
    if not used:
        return SourceRows(split, rows, hashes, None)
    check_columns(loaded, split, rows, compiler)
    return SourceRows(split, rows, hashes, targets_of(loaded, split, rows))


def fixed_examples(loaded: LoadedRecipe, compiler: PromptCompiler) -> PromptCompiler:
    prompt, output = loaded.recipe.prompt, loaded.recipe.output
    if not prompt.examples:
        return compiler
    targets = []
    for i, example in enumerate(prompt.examples):
        where = ("prompt", "examples", i, output.column)
        try:
            text = target_text(example[output.column], output)
        except UnknownLabel as exc:
            raise recipe_error(
                loaded, where, f"{exc.key!r} is not one of output.labels", "use a label or a label_map key"
            ) from None
        if text is None:
            raise recipe_error(loaded, where, "an example needs an answer", "give the example's answer")
        targets.append(text)
    return compiler.with_examples(prompt.examples, targets)


def compile_data(loaded: LoadedRecipe) -> CompiledData:
    """Read the data and render every used split's prompts and targets (no tokenizer needed)."""
    recipe = loaded.recipe
    data = recipe.data
    check_column_specs(loaded)
    compiler = PromptCompiler.from_recipe(recipe.prompt, recipe.output)
    source = load_source(loaded)
    used = used_splits(recipe)
    roles = {name: role for role, name in source.roles.items() if name is not None}
    read = {
        name: read_source_rows(loaded, s, compiler, data.split.type == "column" or roles[name] in used)
        for name, s in source.splits.items()
    }
    assigned, origins, skipped = assign_splits(loaded, source, read)
    check_evaluation_split(loaded, source, assigned)
    # A split nothing reads needs no targets; count it as it stands.
    for source_name, role in roles.items():
        if role not in used:
            rows = read[source_name]
            assigned[role] = (rows, list(range(len(rows.rows))))
            origins[role] = rows.split.where
            skipped[role] = 0

    splits_rows: dict[str, tuple[SourceRows, list[int]]] = {}
    capped: dict[str, int] = {}
    for name in SPLIT_NAMES:
        if name in assigned:
            rows, indices = assigned[name]
            indices, capped[name] = cap(indices, getattr(data.max_rows, name))
            splits_rows[name] = (rows, indices)

    compiler = fixed_examples(loaded, compiler)
    few_shot: dict[str, Any] = {
        "type": "fixed" if recipe.prompt.examples else "none",
        "count": len(recipe.prompt.examples),
    }
    k = recipe.prompt.retrieval.k
    if k:
        rows, indices = splits_rows["train"]
        if len(indices) <= k:
            raise recipe_error(
                loaded,
                ("prompt", "retrieval", "k"),
                f"drawing {k} examples would leave no training rows ({len(indices)} in train)",
                "lower prompt.retrieval.k",
            )
        picks = random.Random(recipe.seed).sample(range(len(indices)), k)
        drawn = [indices[p] for p in picks]
        assert rows.targets is not None
        shot_targets = [str(rows.targets[i]) for i in drawn]  # drawn from rows that have one
        compiler = compiler.with_examples([rows.rows[i] for i in drawn], shot_targets)
        taken = set(picks)
        splits_rows["train"] = (rows, [i for p, i in enumerate(indices) if p not in taken])
        few_shot = {
            "type": "retrieval",
            "count": k,
            "seed": recipe.seed,
            "rows": ["{} row {}".format(*rows.split.place(i)) for i in drawn],
        }

    splits: dict[str, CompiledSplit] = {}
    for name, (rows, indices) in splits_rows.items():
        is_used = name in used
        if is_used and not indices:
            raise UserError(empty_split_message(name, origins[name], skipped[name], capped[name]))
        if is_used:
            assert rows.targets is not None
            prompts = compiler.prompts([rows.rows[i] for i in indices])
            targets = [rows.targets[i] or "" for i in indices]
        else:
            prompts, targets = [], []
        splits[name] = CompiledSplit(
            name=name,
            origin=origins[name],
            used=is_used,
            rows=len(indices),
            prompts=prompts,
            targets=targets,
            hash=split_hash([rows.hashes[i] for i in indices]),
            skipped_rows=skipped[name],
            capped_rows=capped[name],
            carved_fraction=carved_fraction(recipe, source, name),
        )
    compiled = CompiledData(source, compiler, splits, few_shot)
    compiled.notes = data_notes(recipe, compiled)
    return compiled


def carved_fraction(recipe: Recipe, source: Source, name: str) -> float | None:
    if name == "train" or recipe.data.split.type != "hash" or source.roles.get(name) is not None:
        return None
    fraction = float(getattr(recipe.data.split, f"{name}_fraction"))
    return fraction if fraction > 0 else None


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def check_evaluation_split(
    loaded: LoadedRecipe, source: Source, assigned: Mapping[str, tuple[SourceRows, list[int]]]
) -> None:
    """The evaluation split must exist: a split the source lacks with a carving fraction of 0 has
    none (when the recipe set the name to null, validation has said so already)."""
    role = loaded.recipe.data.evaluation_split
    if role in assigned or role not in source.lacking:
        return
    name = getattr(loaded.recipe.data.splits, role)
    raise recipe_error(
        loaded,
        ("data", "split", f"{role}_fraction"),
        f"the source has no {name!r} split to evaluate (it has: {listing(source.lacking[role])}) and "
        f"data.split.{role}_fraction is 0, so none is carved from train",
        f"{did_you_mean(name, source.lacking[role])}set data.split.{role}_fraction above 0, name the source's "
        f"split in data.splits.{role}, or choose another data.evaluation_split",
    )


def empty_split_message(name: str, origin: str, skipped: int, capped: int) -> str:
    why = f"; {skipped:,} rows without a target were skipped" if skipped else ""
    return f"the {name} split is empty ({origin}{why}); it needs at least one row with a target"


def assign_splits(
    loaded: LoadedRecipe, source: Source, read: dict[str, SourceRows]
) -> tuple[dict[str, tuple[SourceRows, list[int]]], dict[str, str], dict[str, int]]:
    """Rows of train, validation and test (positions into their source split), how each was made,
    and how many rows without a target each skipped."""
    recipe = loaded.recipe
    data = recipe.data
    train_name = source.roles["train"]
    assert train_name is not None
    train = read[train_name]
    assert train.targets is not None
    targets = train.targets
    assigned: dict[str, tuple[SourceRows, list[int]]] = {}
    origins: dict[str, str] = {}
    skipped: dict[str, int] = {}
    used = used_splits(recipe)

    if data.split.type == "column":
        column = data.split.column
        if column not in train.rows[0]:
            raise recipe_error(
                loaded,
                ("data", "split", "column"),
                f"{train.split.where} has no split column {column!r}",
                f"{did_you_mean(column, train.rows[0])}columns: {listing(sorted(train.rows[0]))}",
            )
        by_role: dict[str, list[int]] = {n: [] for n in SPLIT_NAMES}
        skipped.update({n: 0 for n in SPLIT_NAMES})
        for i, row in enumerate(train.rows):
            code = split_code(row[column])
            if code is None:
                raise row_error(
                    *train.split.place(i),
                    column,
                    f"{row[column]!r} is not a split",
                    "use 0 train, 1 validation, 2 test",
                )
            if targets[i] is None:
                skipped[code] += 1
            else:
                by_role[code].append(i)
        for role, indices in by_role.items():
            if indices or role in used - {"validation"}:
                assigned[role] = (train, indices)
                origins[role] = f"{train.split.where}, rows with {column} = {SPLIT_NAMES.index(role)}"
        return assigned, origins, skipped

    usable = [i for i, t in enumerate(targets) if t is not None]
    skipped["train"] = len(targets) - len(usable)
    to_carve = [
        (role, getattr(data.split, f"{role}_fraction"))
        for role in ("validation", "test")
        if source.roles.get(role) is None and getattr(data.split, f"{role}_fraction") > 0
    ]
    strata = targets if recipe.output.type == "category" else [None] * len(targets)
    kept, carved = carve(usable, train.hashes, strata, [f for _, f in to_carve])
    assigned["train"] = (train, kept)
    origins["train"] = train.split.where
    for (role, fraction), indices in zip(to_carve, carved, strict=True):
        assigned[role] = (train, indices)
        stratified = ", stratified by label" if recipe.output.type == "category" else ""
        origins[role] = f"carved from {train.split.where}: {percent(fraction)} by row hash{stratified}"
        skipped[role] = 0
    for role in ("validation", "test"):
        name = source.roles.get(role)
        if name is None or role not in used:
            continue
        rows = read[name]
        assert rows.targets is not None
        kept_rows = [i for i, t in enumerate(rows.targets) if t is not None]
        assigned[role] = (rows, kept_rows)
        origins[role] = rows.split.where
        skipped[role] = len(rows.targets) - len(kept_rows)
    return assigned, origins, skipped


def data_notes(recipe: Recipe, data: CompiledData) -> list[str]:
    notes = []
    for name, split in data.splits.items():
        if split.skipped_rows:
            notes.append(f"{split.skipped_rows:,} {name} rows have no target (null or empty) and were skipped")
        # expected_rows are published split sizes: compare with the source split, before carving.
        expected = getattr(recipe.data.expected_rows, name)
        source_name = data.source.roles.get(name)
        source = data.source.splits.get(source_name) if source_name else None
        if expected is not None and source is not None and expected != len(source.rows):
            notes.append(
                f"data.expected_rows.{name} is {expected:,}, but the source's {source_name} split has "
                f"{len(source.rows):,} rows"
            )
    notes += carving_notes(recipe, data.source)
    evaluation = data.splits.get(recipe.data.evaluation_split)
    train = data.splits["train"]
    if evaluation is not None and evaluation is not train and evaluation.used:
        seen = set(train.prompts)
        subset = evaluation.prompts[: recipe.data.evaluation_size]
        leaked = sum(p in seen for p in subset)
        if leaked:
            notes.append(
                f"{leaked:,} of the {len(subset):,} evaluation prompts ({evaluation.name}) also appear in train"
            )
    return notes


def carving_notes(recipe: Recipe, source: Source) -> list[str]:
    """What was carved because the source lacks a split the recipe left at its default name (a
    single file is only ever the training split: carving from it is no news)."""
    notes: list[str] = []
    if source.kind == "file":
        return notes
    for role, present in source.lacking.items():
        name = getattr(recipe.data.splits, role)
        fraction = getattr(recipe.data.split, f"{role}_fraction")
        lacks = f"the source has no {name!r} split (it has: {listing(present)})"
        fix = (
            f"{did_you_mean(name, present)}name the source's {role} split in data.splits.{role}, or set "
            f"data.splits.{role} to null to carve it on purpose"
        )
        if fraction > 0:
            notes.append(
                f"{lacks}, so {percent(fraction)} of train was carved into {role} by row hash "
                f"(data.split.{role}_fraction) ({fix})"
            )
        else:
            notes.append(f"{lacks} and data.split.{role}_fraction is 0, so there is no {role} split ({fix})")
    return notes


# --- what evaluation and prediction consume -------------------------------------------------------


def examples_hash(examples: list[Example]) -> str:
    text = json.dumps([[e.prompt, e.target] for e in examples], ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def evaluation_examples(loaded: LoadedRecipe, limit: int | None = None) -> EvaluationSet:
    """The fixed evaluation subset: the first min(evaluation_size, limit) rows with a gold answer
    of `data.evaluation_split`, in source order, rendered as the model will see them."""
    recipe = loaded.recipe
    compiled = compile_data(loaded)
    name = recipe.data.evaluation_split
    split = compiled.splits.get(name)
    if split is None:
        raise recipe_error(loaded, ("data", "evaluation_split"), f"the data has no {name} split")
    n = recipe.data.evaluation_size if limit is None else min(recipe.data.evaluation_size, limit)
    examples = [Example(i, p, t) for i, (p, t) in enumerate(zip(split.prompts[:n], split.targets[:n], strict=True))]
    labels = recipe.output.labels if recipe.output.type == "category" else ()
    return EvaluationSet(
        split=name,
        examples=examples,
        hash=examples_hash(examples),
        labels=tuple(labels),
        source=split.origin,
        skipped_rows=split.skipped_rows,
    )


def derive_present(loaded: LoadedRecipe, row: Mapping[str, Any]) -> dict[str, Any]:
    """Derived columns for an input row, where the columns they read are present."""
    full = dict(row)
    for name, spec in loaded.recipe.data.columns.items():
        if spec_problem(spec) or not all(has_field(full, c) for c in columns_read(spec)):
            continue
        try:
            full[name] = COLUMN_OPS[spec.op](full, spec)
        except ColumnProblem as exc:
            raise UserError(f"input row: data.columns.{name}: {exc.message}") from None
    return full


def build_prompter(loaded: LoadedRecipe) -> Callable[[Mapping[str, Any]], str]:
    """Render arbitrary input rows as prompts, exactly as training saw them (derived columns,
    few-shot block, template). Retrieved few-shot examples need the training data, read once here."""
    recipe = loaded.recipe
    if recipe.prompt.retrieval.k:
        compiler = compile_data(loaded).compiler
    else:
        compiler = fixed_examples(loaded, PromptCompiler.from_recipe(recipe.prompt, recipe.output))
    where = recipe_location(loaded, ("prompt", "template"))

    def prompter(row: Mapping[str, Any]) -> str:
        full = derive_present(loaded, row)
        missing = [c for c in compiler.template.columns if c not in full]
        if missing:
            raise UserError(
                f"the input row has no column {missing[0]!r}, which prompt.template ({where}) uses "
                f"(columns present: {listing(sorted(map(str, row))) or 'none'})"
            )
        return compiler.prompt(full)

    return prompter


# --- what training consumes ------------------------------------------------------------------------


def cache_key(compiled: CompiledData, tokenizer: Any, setting: str | int, fmt: PromptFormat | None = None) -> str:
    """Everything the tokenized splits depend on: the pipeline version, the tokenizer, the
    max-length setting, the splits' content hashes, every rendered prompt and answer (which
    covers the template, few-shot examples, label mapping, target prefix and derived columns) and,
    when a chat template wraps them, the template and its system message."""
    h = hashlib.sha256()
    head: dict[str, Any] = {
        "version": PIPELINE_VERSION,
        "tokenizer": tokenizer_identity(tokenizer),
        "max_length": setting,
    }
    if fmt is not None and fmt.applied:  # raw text keeps the keys it always had
        head["chat"] = fmt.identity()
    h.update(json.dumps(head, sort_keys=True).encode())
    for name in ("train", "validation"):
        split = compiled.splits.get(name)
        if split is None:
            h.update(b"\x00none")
            continue
        h.update(f"\x00{name}\x00{split.hash}\x00".encode())
        answer = compiled.compiler.answer
        for prompt, target in zip(split.prompts, split.targets, strict=True):
            h.update(prompt.encode())
            h.update(b"\x1f")
            h.update(answer(target).encode())
            h.update(b"\x1e")
    return h.hexdigest()[:40]


def tokenize_compiled(loaded: LoadedRecipe, compiled: CompiledData, tokenizer: Any) -> PreparedData:
    from lora_recipes.data import cache

    recipe = loaded.recipe
    setting = recipe.preprocessing.global_max_sequence_length
    fmt = prompt_format(recipe, tokenizer)
    key = cache_key(compiled, tokenizer, setting, fmt)
    hit = cache.load(key)
    names = [n for n in ("train", "validation") if n in compiled.splits]
    if hit is not None:
        tokenized, meta = hit
        cache_state = "reused"
    else:
        encoded = {
            n: encode_formatted(tokenizer, fmt, compiled.splits[n].prompts, compiled.splits[n].targets) for n in names
        }
        train_enc = encoded["train"]
        max_length = resolve_max_length(setting, train_enc.totals)
        head = cut_head(tokenizer, fmt, train_enc)
        tokenized = {n: cut_split(n, encoded[n], list(range(compiled.splits[n].rows)), max_length, head) for n in names}
        meta = {
            "max_length": max_length,
            "tokens": {
                "prompt": length_stats(train_enc.prompt_lengths),
                "target": length_stats(train_enc.answer_lengths),
                "total": length_stats(train_enc.totals),
            },
            "answer_tokens": {n: sum(len(a) for a in encoded[n].answers) for n in names},
        }
        cache.save(key, list(tokenized.values()), meta)
        cache_state = "written"
    train = tokenized["train"]
    max_length = int(meta["max_length"])
    if not len(train):
        raise UserError(
            f"every training row was dropped: no answer fits in max_length {max_length} with a prompt token to spare "
            f"(raise preprocessing.global_max_sequence_length at {recipe_location(loaded, ('preprocessing', 'global_max_sequence_length'))})"
        )
    report = data_report(loaded, compiled, tokenized, meta, tokenizer, cache_state, fmt)
    return PreparedData(
        train=train,
        validation=tokenized.get("validation"),
        max_length=max_length,
        split_hashes={n: s.hash for n, s in compiled.splits.items()},
        report=report,
    )


def encode_formatted(tokenizer: Any, fmt: PromptFormat, prompts: list[str], targets: list[str]) -> Encoded:
    """Token ids of raw prompts and targets in the recipe's prompt format (raw text or chat turns)."""
    wrapped, answers = fmt.pairs(prompts, targets)
    return encode(tokenizer, wrapped, answers, prompt_special=fmt.prompt_special, append_eos=fmt.append_eos)


def cut_head(tokenizer: Any, fmt: PromptFormat, encoded: Encoded) -> int:
    """Leading prompt tokens a cut keeps: the tokenizer's BOS for raw text, the template's system
    turn and user header for chat turns."""
    chat_head = fmt.head_tokens(tokenizer, encoded.prompts[0]) if encoded.prompts else None
    return chat_head if chat_head is not None else special_tokens(tokenizer)[0]


def prepare_training_data(loaded: LoadedRecipe, tokenizer: Any) -> PreparedData:
    """Train and validation tokenized with `tokenizer` (the base model's), cut to the max length,
    cached; `report` is plan's data section."""
    return tokenize_compiled(loaded, compile_data(loaded), tokenizer)


def first_example(compiled: CompiledData) -> tuple[str | None, str | None]:
    """The first training row's raw prompt and target (plan shows it in the prompt format)."""
    train = compiled.splits.get("train")
    if train is None or not train.prompts:
        return None, None
    return train.prompts[0], train.targets[0]


def data_report(
    loaded: LoadedRecipe,
    compiled: CompiledData,
    tokenized: dict[str, TokenizedSplit],
    meta: dict[str, Any],
    tokenizer: Any,
    cache_state: str,
    fmt: PromptFormat | None = None,
) -> dict[str, Any]:
    recipe = loaded.recipe
    fmt = fmt if fmt is not None else prompt_format(recipe, tokenizer)
    t = recipe.trainer
    approximate = isinstance(tokenizer, ApproximateTokenizer)
    splits: dict[str, Any] = {}
    for name, split in compiled.splits.items():
        entry: dict[str, Any] = {
            "rows": split.rows,
            "from": split.origin,
            "used": split.used,
            "hash": split.hash,
            "skipped_rows": split.skipped_rows,
            "capped_rows": split.capped_rows,
            "carved_fraction": split.carved_fraction,
        }
        if name in tokenized:
            tok = tokenized[name]
            entry.update(
                examples=len(tok),
                truncated_rows=tok.truncated_rows,
                dropped_rows=tok.dropped_rows,
                tokens=sum(tok.lengths),
            )
        splits[name] = entry
    train = tokenized["train"]
    validation = tokenized.get("validation")
    warnings = list(compiled.notes)
    if train.dropped_rows:
        warnings.append(
            f"{train.dropped_rows:,} training rows were dropped: their answer alone needs max_length "
            f"({meta['max_length']}) tokens or more"
        )
    warnings += length_warnings(loaded, compiled, tokenized, int(meta["max_length"]), tokenizer, fmt)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and meta["max_length"] > limit:
        warnings.append(f"max_length {meta['max_length']} exceeds the tokenizer's model_max_length {limit}")
    tokenizer_info: dict[str, Any] = {"name": tokenizer_name(tokenizer), "approximate": approximate}
    if approximate:
        tokenizer_info.update(
            stands_in_for=tokenizer.stands_in_for,
            note=(
                f"token counts are APPROXIMATE: {tokenizer.reason}; they are estimated from the text "
                "(see lora_recipes/data/approx.py; good to about 20%)"
            ),
        )
    eval_batch = t.eval_batch_size or t.batch_size
    return {
        "data": {
            "source": compiled.source.description,
            "kind": compiled.source.kind,
            "tokenizer": tokenizer_info,
            "few_shot": compiled.few_shot,
            "cache": cache_state,
            "prompt_format": fmt.describe(*first_example(compiled)),
        },
        "splits": splits,
        "tokens": meta["tokens"],
        "max_length": meta["max_length"],
        "max_length_setting": recipe.preprocessing.global_max_sequence_length,
        "truncated_rows": sum(s.truncated_rows for s in tokenized.values()),
        "dropped_rows": sum(s.dropped_rows for s in tokenized.values()),
        "skipped_rows": sum(s.skipped_rows for s in compiled.splits.values()),
        "split_hashes": {n: s.hash for n, s in compiled.splits.items()},
        "train_tokens_per_epoch": sum(train.lengths),
        "target_tokens_per_epoch": meta["answer_tokens"]["train"],
        "computed_tokens_per_epoch": computed_tokens(train.lengths, t.batch_size, t.group_by_length),
        "validation_tokens": computed_tokens(validation.lengths, eval_batch, True) if validation is not None else 0,
        "warnings": warnings,
    }


def length_warnings(
    loaded: LoadedRecipe,
    compiled: CompiledData,
    tokenized: dict[str, TokenizedSplit],
    max_length: int,
    tokenizer: Any,
    fmt: PromptFormat | None = None,
) -> list[str]:
    """A max length shorter than most validation rows, or than most rows of the evaluation subset:
    the cut-off was measured on a train split too small or unlike the others. Validation loss (and
    early stopping) would then measure cut rows, and evaluation would show the model prompts far
    longer than any it trained on."""
    recipe = loaded.recipe
    setting = recipe.preprocessing.global_max_sequence_length
    if isinstance(setting, str):
        basis = f"the {setting} of {compiled.splits['train'].rows:,} training rows"
        fix = (
            "add training rows like these, or set preprocessing.global_max_sequence_length to a number of "
            "tokens that fits them"
        )
    else:
        basis = "preprocessing.global_max_sequence_length"
        fix = "raise preprocessing.global_max_sequence_length"
    warnings = []
    evaluation = recipe.data.evaluation_split
    validation = tokenized.get("validation")
    rows = compiled.splits["validation"].rows if "validation" in compiled.splits else 0
    if validation is not None and rows:
        cut = validation.truncated_rows + validation.dropped_rows
        if 2 * cut > rows:
            also = (
                ", and evaluation (on validation) shows the model prompts longer than any it trained on"
                if evaluation == "validation"
                else ""
            )
            warnings.append(
                f"{cut:,} of the {rows:,} validation rows ({cut / rows:.0%}) are longer than max_length "
                f"{max_length} ({basis}) and lose the start of their prompt or are dropped: validation loss "
                f"measures cut rows{also}; {fix}"
            )
    split = compiled.splits.get(evaluation)
    if evaluation not in ("train", "validation") and split is not None and split.used and split.rows:
        n = min(split.rows, recipe.data.evaluation_size)
        fmt = fmt if fmt is not None else prompt_format(recipe, tokenizer)
        encoded = encode_formatted(tokenizer, fmt, split.prompts[:n], split.targets[:n])
        longer = sum(total > max_length for total in encoded.totals)
        if 2 * longer > n:
            warnings.append(
                f"{longer:,} of the first {n:,} {evaluation} rows (the evaluation subset) ({longer / n:.0%}) are "
                f"longer than max_length {max_length} ({basis}): training never shows the model prompts that "
                f"long; {fix}"
            )
    return warnings


# --- plan: the base model's tokenizer, or a labelled approximation --------------------------------


def plan_tokenizer(loaded: LoadedRecipe) -> Any:
    """The base model's tokenizer; when it lives on a hub that cannot be reached and is not in
    the local hub cache (or the hub refuses it), an `ApproximateTokenizer` that says why."""
    from lora_recipes.data import hub

    recipe = loaded.recipe
    params = recipe.model_parameters
    source = recipe_model_source(loaded)
    revision = params.revision
    if source.kind == "hub":
        reason = hub.unreachable_reason()
        if reason is not None:
            wanted = source.gguf_file or "tokenizer_config.json"
            cached = hub.cached_snapshot(source.location, revision, wanted)
            if cached is None:
                return ApproximateTokenizer(
                    recipe.base_model,
                    f"the tokenizer of {recipe.base_model} is not available (the Hugging Face hub cannot be "
                    f"reached: {reason}; and it is not in the local hub cache)",
                )
            source, revision = ModelSource("local", str(cached), source.gguf_file), None
    from lora_recipes.model.loading import load_tokenizer

    try:
        return load_tokenizer(source, revision=revision, trust_remote_code=params.trust_remote_code)
    except UserError as exc:
        if source.kind != "hub":
            raise
        return ApproximateTokenizer(recipe.base_model, str(exc))


def plan_data(loaded: LoadedRecipe) -> dict[str, Any]:
    """Plan's data section: the data read and checked first (fast to fail), then tokenized."""
    compiled = compile_data(loaded)
    tokenizer = plan_tokenizer(loaded)
    return tokenize_compiled(loaded, compiled, tokenizer).report
