"""Validation: the mean answer-token loss over the validation rows, and what it decides (a new
best adapter, early stopping). No I/O here; the loop saves the best adapter and records the loss."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lora_recipes.data.types import TokenizedSplit
from lora_recipes.training import batching
from lora_recipes.training.checkpoint import TrainingState
from lora_recipes.training.step import sum_over_processes, token_loss_sum

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


def bounded_split(split: TokenizedSplit, max_rows: int | None) -> TokenizedSplit:
    """The rows validation uses (`trainer.validation_max_rows`): all of them, or `max_rows` evenly
    spaced ones (positions i * n // max_rows of the n prepared rows), the same on every machine,
    at every validation and after a resume."""
    n = len(split)
    if max_rows is None or n <= max_rows:
        return split
    keep = [i * n // max_rows for i in range(max_rows)]
    return replace(
        split,
        input_ids=[split.input_ids[i] for i in keep],
        prompt_lengths=[split.prompt_lengths[i] for i in keep],
        rows=[split.rows[i] for i in keep],
    )


@dataclass(frozen=True)
class ValidationData:
    split: TokenizedSplit
    batches: list[batching.Batch]  # this process's share (every row is scored once over all processes)
    pad_token_id: int


def validation_loss(
    accelerator: Accelerator,
    model: torch.nn.Module,
    data: ValidationData,
    logits_mask: bool,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Mean answer-token loss over the validation rows (each process scores its share);
    `progress(done, total)` is told after each of this process's batches."""
    import torch

    model.eval()
    total = 0.0
    count = 0
    with torch.no_grad():
        for done, batch in enumerate(data.batches, 1):
            inputs = batching.collate(data.split, batch, data.pad_token_id, accelerator.device)
            total += token_loss_sum(model, inputs, logits_mask).item()
            count += batching.label_tokens(batch, data.split)
            if progress is not None:
                progress(done, len(data.batches))
    summed = sum_over_processes(accelerator, total, count)
    return summed[0] / max(summed[1], 1)


def judge(state: TrainingState, loss: float, early_stop: int) -> bool:
    """Record a validation loss in `state`: whether it is the best so far, and whether training
    should stop early (`early_stop` validations in a row without improvement; -1: never). A loss
    that is not finite (NaN, infinity) is never the best: it counts as no improvement."""
    best = math.isfinite(loss) and (state.best_validation_loss is None or loss < state.best_validation_loss)
    if best:
        state.best_validation_loss, state.best_step, state.validations_since_best = loss, state.step, 0
    else:
        state.validations_since_best += 1
        # early_stop 0 behaves as 1: stop at the first validation without improvement.
        state.stopped_early = early_stop >= 0 and state.validations_since_best >= max(early_stop, 1)
    return best
