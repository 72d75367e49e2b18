"""Compile a resolved recipe into a training plan: what will be trained, for how long, at what cost.

Without data the plan uses what the recipe says about its data (`data.expected_rows`,
`data.expected_tokens`); with data, the data pipeline's report (`data.pipeline.plan_data`: rows
per split, token lengths, the cut-off) replaces those and becomes the plan's data section.
`build_plan` unpacks the recipe once and hands flat values to the small builders below; the
result is a typed `Plan` (planning/sections.py) whose `to_json()` is plan.json's layout.
This module imports nothing heavy: `plan --no-data` must stay as fast as `validate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from lora_recipes.errors import Notice, UserError
from lora_recipes.model.architectures import (
    Architecture,
    find_architecture,
    lora_trainable_params,
    unknown_target_modules,
)
from lora_recipes.model.source import recipe_model_source
from lora_recipes.planning.estimate import FITS_SHARE, Estimate, Method, UnknownEstimate, Workload, estimate, gpu_spec
from lora_recipes.planning.sections import (
    BaseModel,
    DataSection,
    DataSource,
    Plan,
    SplitSummary,
    Steps,
    TokenLengths,
    Training,
)
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.recipe.types import Data, Trainer

__all__ = [
    "Counts",
    "Plan",
    "Steps",
    "bound_validation",
    "build_plan",
    "estimate_on",
    "optimizer_steps",
    "trainer_steps",
]

EXPECTED_BASIS = "recipe expectations (data.expected_rows, data.expected_tokens); every row assumed at that length"


@dataclass(frozen=True)
class Counts:
    """The row and token counts a plan is computed from, and where they come from (`basis`).
    A count left None is taken from the data report, else from the recipe's expectations."""

    train_rows: int | None = None
    validation_rows: int | None = None
    train_tokens_per_epoch: int | None = None  # computed tokens of one epoch, padding included
    validation_tokens: int | None = None  # computed tokens of one validation pass
    max_length: int | None = None
    basis: str | None = None

    def or_else(self, other: Counts) -> Counts:
        """These counts, with `other`'s where these have none."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(self) if getattr(self, f.name) is None})


def optimizer_steps(
    *,
    train_rows: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    processes: int,
    epochs: float,
    train_steps: int | None,
    max_train_steps: int,
    eval_steps: int,
) -> Steps:
    """Optimizer steps from rows: every process takes `batch_size` rows per forward pass, and
    `gradient_accumulation_steps` passes make one step (a short last step ends each epoch)."""
    micro = math.ceil(train_rows / (batch_size * processes)) if train_rows else 0
    per_epoch = math.ceil(micro / gradient_accumulation_steps) if micro else 0
    total = train_steps if train_steps is not None else math.ceil(per_epoch * epochs)
    total = min(total, max_train_steps)
    actual_epochs = total / per_epoch if per_epoch else 0.0
    return Steps(micro, per_epoch, total, round(actual_epochs, 4), total // eval_steps)


def trainer_steps(trainer: Trainer, *, train_rows: int, processes: int) -> Steps:
    """`optimizer_steps` with the recipe's trainer settings."""
    return optimizer_steps(
        train_rows=train_rows,
        batch_size=trainer.batch_size,
        gradient_accumulation_steps=trainer.gradient_accumulation_steps,
        processes=processes,
        epochs=trainer.epochs,
        train_steps=trainer.train_steps,
        max_train_steps=trainer.max_train_steps,
        eval_steps=trainer.eval_steps,
    )


def resolve_architecture(loaded: LoadedRecipe) -> Architecture | None:
    try:
        source = recipe_model_source(loaded)
    except UserError:  # e.g. a package: model not installed: plan still counts by name
        source = None
    return find_architecture(loaded.recipe.base_model, source.local_dir if source else None)


def build_plan(
    loaded: LoadedRecipe,
    *,
    data: Mapping[str, Any] | None = None,
    measured: Counts | None = None,
    processes: int = 1,
) -> Plan:
    """The plan of `loaded`. Counts come from `measured` (what train measured on the prepared
    data), else from `data`, the data pipeline's report, else from the recipe's expectations.
    A report with splits also becomes the plan's data section; one without (`{}`, as synthetic
    data has) gives no data section and no counts."""
    recipe, t, adapter = loaded.recipe, loaded.recipe.trainer, loaded.recipe.adapter
    report = data if data is not None and "splits" in data else None
    expected_train, expected_validation = expected_rows_after_carving(recipe.data)
    expected = expected_counts(
        expected_train,
        expected_validation,
        recipe.preprocessing.global_max_sequence_length,
        recipe.data.expected_tokens,
    )
    counts = plan_counts(measured, report, t.batch_size, expected)
    split_validation_rows = report_counts(report).validation_rows if report is not None else counts.validation_rows
    counts = bound_validation(counts, t.validation_max_rows)
    arch = resolve_architecture(loaded)
    rows_known = counts.train_rows is not None or t.train_steps is not None
    steps = trainer_steps(t, train_rows=counts.train_rows or 0, processes=processes) if rows_known else None
    training = Training(
        base_model=BaseModel(recipe.base_model, arch),
        trainable_params=trainable_params(arch, adapter.type, adapter.target_modules, adapter.r),
        processes=processes,
        effective_batch_size=t.batch_size * t.gradient_accumulation_steps * processes,
        max_length=counts.max_length,
        steps=steps,
        validation_rows=counts.validation_rows,
        validation_split_rows=split_validation_rows,
    )
    q = recipe.quantization
    method = Method(q.bits, q.bnb_4bit_use_double_quant, t.enable_gradient_checkpointing)
    est = plan_estimate(training, counts, method, t.batch_size, recipe.cost.gpu, recipe.cost.price_per_hour_usd)
    warnings = [
        *adapter_warnings(adapter.type, adapter.target_modules, arch),
        *(_notice_text(n) for n in loaded.notices),  # serving checks
        *(report["warnings"] if report is not None else ()),
        *memory_warnings(est),
    ]
    section = data_section(report, steps) if report is not None else None
    return Plan(loaded.name, loaded.resolved, training, est, tuple(warnings), section)


def estimate_on(plan: Plan, gpu: str, price_override: float | None) -> Estimate | UnknownEstimate:
    """The plan's run priced on `gpu` (a table entry, or a MIG slice of one: see estimate.py), at
    `price_override` per hour when given: the same workload, nothing rebuilt."""
    if isinstance(plan.estimate, UnknownEstimate):
        return replace(plan.estimate, gpu=gpu)
    return estimate(plan.estimate.architecture, plan.estimate.workload, gpu, price_override)


# --- counts --------------------------------------------------------------------------------------


def expected_rows_after_carving(data: Data) -> tuple[int | None, int | None]:
    """The training and validation rows `data.expected_rows` implies: a split the recipe says the
    source lacks (`data.splits.validation` or `test` null) and does not count is carved from train
    by row hash (`data.split.*_fraction` of the source's train rows)."""
    train, validation = data.expected_rows.train, data.expected_rows.validation
    if train is None or data.split.type != "hash":
        return train, validation
    carved_validation = 0
    if validation is None and data.splits.validation is None:
        carved_validation = round(train * data.split.validation_fraction)
        validation = carved_validation or None
    carved_test = 0
    if data.expected_rows.test is None and data.splits.test is None:
        carved_test = round(train * data.split.test_fraction)
    return train - carved_validation - carved_test, validation


def expected_counts(
    train_rows: int | None, validation_rows: int | None, length_setting: int | str, expected_tokens: int | None
) -> Counts:
    """What the recipe expects: every row at a fixed max length if it sets one, else at `expected_tokens`."""
    length = length_setting if isinstance(length_setting, int) else expected_tokens
    return Counts(train_rows, validation_rows, max_length=length, basis=EXPECTED_BASIS)


def report_counts(report: Mapping[str, Any]) -> Counts:
    """The counts a data report measured (its basis is `measured_basis`)."""
    splits = report["splits"]
    return Counts(
        train_rows=splits["train"]["examples"],
        validation_rows=splits["validation"]["examples"] if "validation" in splits else 0,
        train_tokens_per_epoch=report["computed_tokens_per_epoch"],
        validation_tokens=report["validation_tokens"],
        max_length=report["max_length"],
    )


def measured_basis(train_rows: int | None, batch_size: int, approximate: bool) -> str:
    return (
        f"measured: {train_rows:,} training rows at their token lengths after the cut"
        f" (padding for batch size {batch_size} included)" + (", with APPROXIMATE token counts" if approximate else "")
    )


def plan_counts(measured: Counts | None, report: Mapping[str, Any] | None, batch_size: int, expected: Counts) -> Counts:
    """`measured`, then the report's counts, then `expected`: the first one known of each."""
    counts = measured or Counts()
    if report is not None:
        counts = counts.or_else(report_counts(report))
        if counts.basis is None:
            approximate = report["data"]["tokenizer"]["approximate"]
            counts = replace(counts, basis=measured_basis(counts.train_rows, batch_size, approximate))
    return counts.or_else(expected)


def bound_validation(counts: Counts, max_rows: int | None) -> Counts:
    """The validation rows each validation scores under `trainer.validation_max_rows`, with the
    validation tokens scaled to them (train's measured counts are bounded already: unchanged)."""
    rows = counts.validation_rows
    if max_rows is None or rows is None or rows <= max_rows:
        return counts
    tokens = counts.validation_tokens
    scaled = None if tokens is None else round(tokens * max_rows / rows)
    return replace(counts, validation_rows=max_rows, validation_tokens=scaled)


# --- sections ------------------------------------------------------------------------------------


def trainable_params(
    arch: Architecture | None, adapter_type: str, target_modules: tuple[str, ...], r: int
) -> int | None:
    if arch is None:
        return None
    return lora_trainable_params(arch, target_modules, r) if adapter_type == "lora" else arch.total_params


def data_section(report: Mapping[str, Any], steps: Steps | None) -> DataSection:
    """The data report as the plan's data section, plus what follows from it and the steps: the
    tokens that training will read (and the answer tokens the loss covers) over the whole run."""
    epochs = steps.epochs if steps else 0.0
    return DataSection(
        source=DataSource.from_json(report["data"]),
        splits={name: SplitSummary.from_json(split) for name, split in report["splits"].items()},
        tokens=TokenLengths.from_json(report["tokens"]),
        max_length_setting=report["max_length_setting"],
        tokens_to_train=round(report["train_tokens_per_epoch"] * epochs),
        target_tokens_to_train=round(report["target_tokens_per_epoch"] * epochs),
    )


# --- the estimate --------------------------------------------------------------------------------


def missing_inputs(training: Training) -> list[str]:
    """What an estimate needs that the plan does not know."""
    missing = []
    if training.steps is None:
        missing.append("the number of training rows (data.expected_rows.train)")
    if training.max_length is None:
        missing.append("a token length (data.expected_tokens or an integer preprocessing.global_max_sequence_length)")
    if training.base_model.architecture is None:
        missing.append("the base model's shape (not a known architecture and no local config.json)")
    return missing


def plan_workload(training: Training, counts: Counts, method: Method, batch_size: int) -> Workload:
    """What the planned run computes: its steps' rows at their measured (or expected) token counts."""
    steps, length, trainable = training.steps, training.max_length, training.trainable_params
    assert steps is not None and length is not None and trainable is not None and counts.basis is not None
    examples = steps.total * training.effective_batch_size
    rows, per_epoch = counts.train_rows, counts.train_tokens_per_epoch
    train_tokens = int(per_epoch * examples / rows) if per_epoch is not None and rows else examples * length
    per_validation = counts.validation_tokens
    if per_validation is None:
        per_validation = (counts.validation_rows or 0) * length
    # Forward passes, for the estimate's per-micro-batch cost (validation batches taken at batch_size).
    validation_batches = math.ceil((counts.validation_rows or 0) / batch_size) * steps.validations
    return Workload(
        method,
        trainable,
        train_tokens,
        per_validation * steps.validations,
        batch_size * length,
        counts.basis,
        train_micro_batches=math.ceil(examples / batch_size),
        validation_micro_batches=validation_batches,
    )


def plan_estimate(
    training: Training, counts: Counts, method: Method, batch_size: int, gpu: str, price_override: float | None
) -> Estimate | UnknownEstimate:
    missing = missing_inputs(training)
    if missing:
        return UnknownEstimate(gpu, "unknown: " + "; ".join(missing))
    arch = training.base_model.architecture
    assert arch is not None
    return estimate(arch, plan_workload(training, counts, method, batch_size), gpu, price_override)


# --- warnings ------------------------------------------------------------------------------------


def adapter_warnings(adapter_type: str, target_modules: tuple[str, ...], arch: Architecture | None) -> list[str]:
    """Target modules the architecture does not have (what servers accept is in recipe.serving)."""
    if adapter_type != "lora" or arch is None:
        return []
    unknown = unknown_target_modules(arch, target_modules)
    return [f"{arch.name} has no module named {', '.join(unknown)}"] if unknown else []


def memory_warnings(est: Estimate | UnknownEstimate) -> list[str]:
    if isinstance(est, UnknownEstimate) or est.fits_in_memory:
        return []
    return [
        f"the estimated peak memory ({est.peak_memory_bytes / 2**30:.1f} GiB) exceeds what the {est.gpu}'s "
        f"{gpu_spec(est.gpu).memory_gib:g} GB leave for training ({FITS_SHARE:.0%}); lower trainer.batch_size or the "
        "max length, or enable trainer.enable_gradient_checkpointing"
    ]


def _notice_text(notice: Notice) -> str:
    prefix = "" if notice.severity == "warning" else f"{notice.severity}: "
    return prefix + notice.message + (f" ({notice.hint})" if notice.hint else "")
