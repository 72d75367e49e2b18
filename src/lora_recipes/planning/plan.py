"""Compile a resolved recipe into a training plan: what will be trained, for how long, at what cost.

Without data the plan uses what the recipe says about its data (`data.expected_rows`,
`data.expected_tokens`); with data, the data pipeline's report (`data.pipeline.plan_data`: rows
per split, token lengths, the cut-off) replaces those and becomes the plan's data section.
This module imports nothing heavy: `plan --no-data` must stay as fast as `validate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_recipes.errors import UserError
from lora_recipes.model.architectures import (
    Architecture,
    find_architecture,
    lora_trainable_params,
    unknown_target_modules,
)
from lora_recipes.model.source import recipe_model_source
from lora_recipes.planning.estimate import estimate
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.recipe.types import Recipe, Trainer

# Target modules LoRAX can serve for Llama/Mistral-style models (its adapter loader skips others).
LORAX_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}


@dataclass(frozen=True)
class Steps:
    micro_batches_per_epoch: int
    per_epoch: int
    total: int
    epochs: float
    validations: int


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


def adapter_warnings(recipe: Recipe, arch: Architecture | None) -> list[str]:
    warnings: list[str] = []
    targets = recipe.adapter.target_modules
    if recipe.adapter.type == "lora":
        ignored = [m for m in targets if m != "all-linear" and m not in LORAX_MODULES]
        if ignored:
            warnings.append(f"LoRAX ignores adapters on {', '.join(ignored)}; vLLM and peft load them")
        if arch is not None:
            unknown = unknown_target_modules(arch, targets)
            if unknown:
                warnings.append(f"{arch.name} has no module named {', '.join(unknown)}")
    return warnings


def build_plan(
    loaded: LoadedRecipe,
    *,
    train_rows: int | None = None,
    validation_rows: int | None = None,
    train_tokens_per_epoch: int | None = None,
    validation_tokens: int | None = None,
    max_length: int | None = None,
    processes: int = 1,
    basis: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan as a JSON-ready mapping. Row and token counts default to the recipe's expectations;
    `train_tokens_per_epoch` counts computed tokens (padding included). `data`, the data
    pipeline's report, supplies measured counts where no argument gives them and is merged in as
    the plan's data section, so `plan --format json` and a run's plan.json have one layout."""
    recipe = loaded.recipe
    t = recipe.trainer
    if data is not None:  # measured counts; arguments given explicitly (by train) still win
        measured = data["splits"]
        if train_rows is None:
            train_rows = measured["train"]["examples"]
        if validation_rows is None:
            validation_rows = measured["validation"]["examples"] if "validation" in measured else 0
        if train_tokens_per_epoch is None:
            train_tokens_per_epoch = data["computed_tokens_per_epoch"]
        if validation_tokens is None:
            validation_tokens = data["validation_tokens"]
        if max_length is None:
            max_length = data["max_length"]
        tokenizer = data["data"]["tokenizer"]
        basis = basis or (
            f"measured: {train_rows:,} training rows at their token lengths after the cut"
            f" (padding for batch size {t.batch_size} included)"
            + (", with APPROXIMATE token counts" if tokenizer["approximate"] else "")
        )
    arch = resolve_architecture(loaded)
    expected = recipe.data.expected_rows
    rows = train_rows if train_rows is not None else expected.train
    val_rows = validation_rows if validation_rows is not None else expected.validation
    setting = recipe.preprocessing.global_max_sequence_length
    length = (
        max_length if max_length is not None else (setting if isinstance(setting, int) else recipe.data.expected_tokens)
    )
    basis = basis or "recipe expectations (data.expected_rows, data.expected_tokens); every row assumed at that length"

    plan: dict[str, Any] = {
        "name": loaded.name,
        "recipe": loaded.resolved,
        "effective_batch_size": t.batch_size * t.gradient_accumulation_steps * processes,
        "processes": processes,
        "base_model": {
            "id": recipe.base_model,
            "architecture": arch.name if arch else None,
            "total_params": arch.total_params if arch else None,
        },
        "lora_trainable_params": (
            lora_trainable_params(arch, recipe.adapter.target_modules, recipe.adapter.r)
            if arch and recipe.adapter.type == "lora"
            else (arch.total_params if arch else None)
        ),
        "max_length": length,
        "steps": None,
        "estimate": None,
        "warnings": adapter_warnings(recipe, arch),
    }
    missing = []
    if rows is None and t.train_steps is None:
        missing.append("the number of training rows (data.expected_rows.train)")
    if length is None:
        missing.append("a token length (data.expected_tokens or an integer preprocessing.global_max_sequence_length)")
    if arch is None:
        missing.append("the base model's shape (not a known architecture and no local config.json)")
    if rows is not None or t.train_steps is not None:
        steps = trainer_steps(t, train_rows=rows or 0, processes=processes)
        plan["steps"] = {
            "per_epoch": steps.per_epoch,
            "total": steps.total,
            "epochs": steps.epochs,
            "validations": steps.validations,
        }
    if data is not None:
        plan.update(data_section(data, plan["steps"]))
        plan["warnings"] += data["warnings"]
    if missing:
        plan["estimate"] = {
            "gpu": recipe.cost.gpu,
            "hours": None,
            "cost_usd": None,
            "reason": "unknown: " + "; ".join(missing),
        }
        return plan
    assert arch is not None and length is not None and plan["steps"] is not None
    examples = plan["steps"]["total"] * plan["effective_batch_size"]
    if train_tokens_per_epoch is not None and rows:
        train_tokens = int(train_tokens_per_epoch * examples / rows)
    else:
        train_tokens = examples * length
    val_tokens = validation_tokens if validation_tokens is not None else (val_rows or 0) * length
    est = estimate(
        total_params=arch.total_params,
        trainable_params=plan["lora_trainable_params"],
        hidden_size=arch.hidden_size,
        num_layers=arch.num_layers,
        vocab_size=arch.vocab_size,
        embedding_params=arch.embedding_params,
        bits=recipe.quantization.bits,
        double_quant=recipe.quantization.bnb_4bit_use_double_quant,
        gradient_checkpointing=t.enable_gradient_checkpointing,
        train_tokens=train_tokens,
        validation_tokens=val_tokens * plan["steps"]["validations"],
        batch_size=t.batch_size,
        max_length=length,
        gpu=recipe.cost.gpu,
        price_per_hour_usd=recipe.cost.price_per_hour_usd,
        basis=basis,
    )
    plan["estimate"] = est.to_json()
    if not est.fits_in_memory:
        plan["warnings"].append(
            f"the estimated peak memory ({est.peak_memory_bytes / 2**30:.1f} GiB) exceeds the {recipe.cost.gpu}'s;"
            " lower trainer.batch_size or the max length, or enable trainer.enable_gradient_checkpointing"
        )
    return plan


DATA_KEYS = ("data", "splits", "tokens", "max_length_setting", "truncated_rows", "dropped_rows", "skipped_rows")


def data_section(data: Mapping[str, Any], steps: Mapping[str, Any] | None) -> dict[str, Any]:
    """The data report's keys for the plan, plus what follows from them and the steps: the tokens
    that training will read (and the answer tokens the loss covers) over the whole run."""
    section = {k: data[k] for k in DATA_KEYS}
    section["split_hashes"] = dict(data["split_hashes"])
    epochs = steps["epochs"] if steps else 0.0
    section["tokens_to_train"] = round(data["train_tokens_per_epoch"] * epochs)
    section["target_tokens_to_train"] = round(data["target_tokens_per_epoch"] * epochs)
    return section


def _fmt_int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"


def render_plan_text(plan: dict[str, Any], resolved_yaml: str) -> str:
    """A human-readable plan: the resolved recipe, then what follows from it."""
    lines = [f"# plan for {plan['name']}", "", "## resolved recipe", "", resolved_yaml.rstrip(), ""]
    if "splits" in plan:
        lines += [*render_data_section(plan), ""]
    lines.append("## training")
    base = plan["base_model"]
    arch = base["architecture"] or "unknown architecture"
    lines.append(f"base model          {base['id']} ({arch}, {_fmt_int(base['total_params'])} parameters)")
    lines.append(f"trainable params    {_fmt_int(plan['lora_trainable_params'])}")
    lines.append(f"effective batch     {plan['effective_batch_size']} rows per optimizer step")
    lines.append(f"max length          {_fmt_int(plan['max_length'])} tokens")
    steps = plan["steps"]
    if steps:
        lines.append(
            f"steps               {steps['total']:,} ({steps['per_epoch']:,} per epoch, {steps['epochs']} epochs, {steps['validations']} validations)"
        )
    else:
        lines.append("steps               unknown (needs the number of training rows)")
    est = plan["estimate"]
    lines += ["", f"## estimate on {est['gpu']}"]
    if est.get("hours") is None:
        lines.append(est.get("reason", "unknown"))
    else:
        lines.append(f"time                {est['hours']:.2f} GPU-hours at ~{est['tokens_per_second']:,.0f} tokens/s")
        lines.append(f"cost                ${est['cost_usd']:.2f} at ${est['price_per_hour_usd']:.2f}/GPU-hour")
        lines.append(
            f"peak memory         {est['peak_memory_bytes'] / 2**30:.1f} GiB ({'fits' if est['fits_in_memory'] else 'does NOT fit'})"
        )
        lines.append(f"basis               {est['basis']}")
    if plan["warnings"]:
        lines += ["", "## warnings"] + [f"- {w}" for w in plan["warnings"]]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def render_data_section(plan: dict[str, Any]) -> list[str]:
    data = plan["data"]
    tokenizer = data["tokenizer"]
    few = data["few_shot"]
    lines = ["## data", "", f"source              {data['source']}"]
    if tokenizer["approximate"]:
        lines.append(f"tokenizer           {tokenizer['stands_in_for']}: {tokenizer['note']}")
    else:
        lines.append(f"tokenizer           {tokenizer['name']}")
    if few["type"] == "retrieval":
        lines.append(
            f"few-shot examples   {few['count']} rows drawn from train (seed {few['seed']}), kept out of training"
        )
    elif few["type"] == "fixed":
        lines.append(f"few-shot examples   {few['count']} fixed in the recipe")
    lines += ["", f"{'split':<12}{'rows':>9}{'examples':>10}{'skipped':>9}{'truncated':>11}{'dropped':>9}  from"]
    for name, split in plan["splits"].items():
        origin = split["from"] + ("" if split["used"] else " (not used by this recipe)")
        lines.append(
            f"{name:<12}{_cell(split['rows']):>9}{_cell(split.get('examples')):>10}{_cell(split['skipped_rows']):>9}"
            f"{_cell(split.get('truncated_rows')):>11}{_cell(split.get('dropped_rows')):>9}  {origin}"
        )
    lines += ["", f"{'tokens (train)':<16}" + "".join(f"{k:>8}" for k in ("min", "p50", "p95", "p99", "max", "mean"))]
    for part in ("prompt", "target", "total"):
        stats = plan["tokens"][part]
        lines.append(f"{part:<16}" + "".join(f"{stats[k]:>8,}" for k in ("min", "p50", "p95", "p99", "max", "mean")))
    setting = plan["max_length_setting"]
    how = (
        f"{setting} of the training rows' prompt+answer lengths" if isinstance(setting, str) else "fixed in the recipe"
    )
    lines += [
        "",
        f"max length          {plan['max_length']:,} tokens ({how}); truncated {plan['truncated_rows']:,} rows,"
        f" dropped {plan['dropped_rows']:,}",
        f"tokens to train     {plan['tokens_to_train']:,} ({plan['target_tokens_to_train']:,} of them answer tokens,"
        " which the loss covers)",
    ]
    lines += [f"split hash          {name}: {h}" for name, h in plan["split_hashes"].items()]
    return lines
