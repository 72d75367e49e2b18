"""The plan as text: what `lora-recipes plan` prints by default."""

from __future__ import annotations

from lora_recipes.data.chat import describe_lines
from lora_recipes.planning.estimate import UnknownEstimate
from lora_recipes.planning.sections import DataSection, Plan, Training

GIB = 2**30
STATS = ("min", "p50", "p95", "p99", "max", "mean")


def _fmt_int(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"


def _cell(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def render_plan_text(plan: Plan, resolved_yaml: str) -> str:
    """A human-readable plan: the resolved recipe, then what follows from it."""
    lines = [f"# plan for {plan.name}", "", "## resolved recipe", "", resolved_yaml.rstrip(), ""]
    if plan.data is not None:
        lines += [*render_data_section(plan.data, plan.training.max_length), ""]
    lines += render_training(plan.training)
    lines += ["", *render_estimate(plan)]
    if plan.warnings:
        lines += ["", "## warnings"] + [f"- {w}" for w in plan.warnings]
    return "\n".join(lines) + "\n"


def render_training(training: Training) -> list[str]:
    base, arch, steps = training.base_model, training.base_model.architecture, training.steps
    lines = [
        "## training",
        f"base model          {base.id} ({arch.name if arch else 'unknown architecture'},"
        f" {_fmt_int(arch.total_params if arch else None)} parameters)",
        f"trainable params    {_fmt_int(training.trainable_params)}",
        f"effective batch     {training.effective_batch_size} rows per optimizer step",
        f"max length          {_fmt_int(training.max_length)} tokens",
    ]
    if steps:
        lines.append(
            f"steps               {steps.total:,} ({steps.per_epoch:,} per epoch, {steps.epochs} epochs,"
            f" {steps.validations} validations)"
        )
    else:
        lines.append("steps               unknown (needs the number of training rows)")
    used, split = training.validation_rows, training.validation_split_rows
    if used:
        of = f" of {split:,} (trainer.validation_max_rows)" if split is not None and split > used else ""
        lines.append(f"validation rows     {used:,}{of} per validation")
    return lines


def render_estimate(plan: Plan) -> list[str]:
    est = plan.estimate
    lines = [f"## estimate on {est.gpu}"]
    if isinstance(est, UnknownEstimate):
        return [*lines, est.reason]
    return [
        *lines,
        f"time                {est.hours:.2f} GPU-hours at ~{est.tokens_per_second:,.0f} tokens/s",
        f"cost                ${est.cost_usd:.2f} at ${est.price_per_hour_usd:.2f}/GPU-hour",
        f"peak memory         {est.peak_memory_bytes / GIB:.1f} GiB ({'fits' if est.fits_in_memory else 'does NOT fit'})",
        f"basis               {est.workload.basis}",
    ]


def render_data_section(data: DataSection, max_length: int | None) -> list[str]:
    source, tokenizer, few = data.source, data.source.tokenizer, data.source.few_shot
    lines = ["## data", "", f"source              {source.source}"]
    if tokenizer.approximate:
        lines.append(f"tokenizer           {tokenizer.stands_in_for}: {tokenizer.note}")
    else:
        lines.append(f"tokenizer           {tokenizer.name}")
    if few.type == "retrieval":
        lines.append(f"few-shot examples   {few.count} rows drawn from train (seed {few.seed}), kept out of training")
    elif few.type == "fixed":
        lines.append(f"few-shot examples   {few.count} fixed in the recipe")
    lines += describe_lines(dict(source.prompt_format) if source.prompt_format is not None else None)
    lines += ["", *render_splits(data)]
    lines += ["", f"{'tokens (train)':<16}" + "".join(f"{k:>8}" for k in STATS)]
    for part, part_stats in (
        ("prompt", data.tokens.prompt),
        ("target", data.tokens.target),
        ("total", data.tokens.total),
    ):
        stats = part_stats.to_json()
        lines.append(f"{part:<16}" + "".join(f"{stats[k]:>8,}" for k in STATS))
    setting = data.max_length_setting
    how = (
        f"{setting} of the training rows' prompt+answer lengths" if isinstance(setting, str) else "fixed in the recipe"
    )
    lines += [
        "",
        f"max length          {max_length:,} tokens ({how}); truncated {data.truncated_rows:,} rows,"
        f" dropped {data.dropped_rows:,}",
        f"tokens to train     {data.tokens_to_train:,} ({data.target_tokens_to_train:,} of them answer tokens,"
        " which the loss covers)",
    ]
    lines += [f"split hash          {name}: {h}" for name, h in data.split_hashes.items()]
    return lines


def render_splits(data: DataSection) -> list[str]:
    lines = [f"{'split':<12}{'rows':>9}{'examples':>10}{'skipped':>9}{'truncated':>11}{'dropped':>9}  from"]
    for name, split in data.splits.items():
        origin = split.origin + ("" if split.used else " (not used by this recipe)")
        tok = split.tokenized
        examples, truncated, dropped = (tok.examples, tok.truncated_rows, tok.dropped_rows) if tok else (None,) * 3
        lines.append(
            f"{name:<12}{_cell(split.counts.rows):>9}{_cell(examples):>10}{_cell(split.counts.skipped_rows):>9}"
            f"{_cell(truncated):>11}{_cell(dropped):>9}  {origin}"
        )
    return lines
