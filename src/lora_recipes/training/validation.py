"""Validation: the mean answer-token loss over the validation split, and what it decides (a new
best adapter, early stopping). No I/O here; the loop saves the best adapter and records the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lora_recipes.data.types import TokenizedSplit
from lora_recipes.training import batching
from lora_recipes.training.checkpoint import TrainingState
from lora_recipes.training.step import sum_over_processes, token_loss_sum

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


@dataclass(frozen=True)
class ValidationData:
    split: TokenizedSplit
    batches: list[batching.Batch]  # this process's share (every row is scored once over all processes)
    pad_token_id: int


def validation_loss(accelerator: Accelerator, model: torch.nn.Module, data: ValidationData, logits_mask: bool) -> float:
    """Mean answer-token loss over the whole validation split (each process scores its share)."""
    import torch

    model.eval()
    total = 0.0
    count = 0
    with torch.no_grad():
        for batch in data.batches:
            inputs = batching.collate(data.split, batch, data.pad_token_id, accelerator.device)
            total += token_loss_sum(model, inputs, logits_mask).item()
            count += batching.label_tokens(batch, data.split)
    summed = sum_over_processes(accelerator, total, count)
    return summed[0] / max(summed[1], 1)


def judge(state: TrainingState, loss: float, early_stop: int) -> bool:
    """Record a validation loss in `state`: whether it is the best so far, and whether training
    should stop early (`early_stop` validations in a row without improvement; -1: never)."""
    best = state.best_validation_loss is None or loss < state.best_validation_loss
    if best:
        state.best_validation_loss, state.best_step, state.validations_since_best = loss, state.step, 0
    else:
        state.validations_since_best += 1
        # early_stop 0 behaves as 1: stop at the first validation without improvement.
        state.stopped_early = early_stop >= 0 and state.validations_since_best >= max(early_stop, 1)
    return best
