"""One optimizer step, with no I/O: forward and backward over the step's micro-batches, gradient
clipping, the optimizer and schedule step. Also the loss it minimises and the learning-rate
schedule's formula.

The loss of a step is the mean cross-entropy over the answer tokens of all of the step's
micro-batches on all processes (not a mean of per-batch means), so gradient accumulation and
data parallelism give the same update as one large batch would.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lora_recipes.data.types import IGNORE_INDEX, TokenizedSplit
from lora_recipes.training import batching

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler


@dataclass(frozen=True)
class Trainables:
    """What an optimizer step changes, and how its loss is computed."""

    model: torch.nn.Module  # as accelerate prepared it (wrapped for data parallelism)
    bare: torch.nn.Module  # the same model unwrapped: what is saved and restored
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    max_norm: float  # gradient clipping by global norm; math.inf for none
    logits_mask: bool  # see token_loss_sum
    # fp16's loss scaling (torch's GradScaler, accelerate's `scaler`); None in bf16 and float32. Its
    # scale is part of the training state: a resume that started it afresh would skip other steps.
    scaler: Any = None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The trainable parameters (in the optimizer's order)."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]


@dataclass(frozen=True)
class TrainingData:
    """The training split and the order it is trained in."""

    split: TokenizedSplit
    schedule: batching.Schedule
    pad_token_id: int


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the answer tokens of the step, all processes
    grad_norm: float  # before clipping
    learning_rate: float  # the rate this step used
    tokens_real: int  # non-padding tokens of the step, all processes
    tokens_computed: int  # padding included


def train_step(accelerator: Accelerator, trainables: Trainables, data: TrainingData, step: int) -> StepResult:
    """Optimizer step `step` (0-based): this process's share of the step's micro-batches forward
    and backward, gradients averaged over processes, clipped, then the optimizer and schedule step."""
    import torch

    model, world = trainables.model, accelerator.num_processes
    step_batches = data.schedule.step(step)  # every process's micro-batches
    window = max(sum(batching.label_tokens(b, data.split) for r in step_batches for b in r), 1)
    mine = step_batches[accelerator.process_index]
    # The step's loss stays on the device until the step ends: one `.item()` (one wait for the GPU)
    # per step, not per micro-batch. float64, added in the same order: the same number as adding
    # each micro-batch's float32 sum as a Python float.
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for i, batch in enumerate(mine):
        inputs = batching.collate(data.split, batch, data.pad_token_id, accelerator.device)
        # Gradients are averaged over processes only after the step's last micro-batch.
        sync = contextlib.nullcontext() if i == len(mine) - 1 else accelerator.no_sync(model)
        with sync:
            summed = token_loss_sum(model, inputs, trainables.logits_mask)
            # Mean over the answer tokens of the whole step on all processes;
            # x world undoes the average that data parallelism takes.
            accelerator.backward(summed * world / window)
        loss_sum += summed.detach().to(torch.float64)
    grad_norm = accelerator.clip_grad_norm_(trainables.params, trainables.max_norm)
    learning_rate = float(trainables.scheduler.get_last_lr()[0])
    trainables.optimizer.step()
    trainables.scheduler.step()
    trainables.optimizer.zero_grad(set_to_none=True)
    lengths = data.schedule.lengths
    return StepResult(
        loss=sum_over_processes(accelerator, loss_sum.item()) / window,
        grad_norm=float(grad_norm),
        learning_rate=learning_rate,
        tokens_real=sum(batching.real_tokens(b, lengths) for r in step_batches for b in r),
        tokens_computed=sum(batching.padded_tokens(b, lengths) for r in step_batches for b in r),
    )


def token_loss_sum(model: torch.nn.Module, inputs: dict[str, Any], logits_mask: bool) -> torch.Tensor:
    """Sum of the cross-entropy of every answer token (prompt and padding are not trained).

    With `logits_mask` the LM head runs only at the positions that predict an answer token; for
    short answers (labels, classes) that skips most of a large vocabulary's projection.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[:, 1:]
    if logits_mask:
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != IGNORE_INDEX
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep, use_cache=False
        ).logits
        wanted = targets[keep[:, :-1]]
    else:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        logits, wanted = logits[:, :-1].flatten(0, 1), targets.flatten()
    return F.cross_entropy(logits.float(), wanted, ignore_index=IGNORE_INDEX, reduction="sum")


def lr_factor(step: int, total: int, warmup: int, decay: str) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine, linear or no decay to the end
    (the transformers schedules' formulas)."""
    if step < warmup:
        return step / max(1, warmup)
    if decay == "none":
        return 1.0
    done = (step - warmup) / max(1, total - warmup)
    if decay == "linear":
        return max(0.0, 1.0 - done)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * done)))


def sum_over_processes(accelerator: Accelerator, *values: float) -> Any:
    """Sum numbers over all processes (one value: a float; several: a list)."""
    if accelerator.num_processes == 1:
        return values[0] if len(values) == 1 else list(values)
    import torch

    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    summed = accelerator.reduce(tensor, reduction="sum").tolist()
    return summed[0] if len(values) == 1 else summed
