"""Which rows go into which micro-batch, on which process, at which optimizer step.

The order is a pure function of (seed, epoch, lengths, batch size, processes), so every process
computes the same global order without talking to the others, and a resumed run finds its place
from the step number alone.

Length grouping: each epoch the rows are shuffled, cut into pools of `POOL_BATCHES` batches,
sorted by length inside each pool and cut into batches, and the batches are shuffled. Rows of
similar length share a batch (little padding) while batch order and membership still vary by
epoch.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from typing import Any

from lora_recipes.data.types import IGNORE_INDEX, TokenizedSplit

POOL_BATCHES = 64

Batch = list[int]  # row indices into a TokenizedSplit


def epoch_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool) -> list[Batch]:
    """All batches of one epoch, in the order they are trained (before sharding)."""
    rng = random.Random(f"lora-recipes:{seed}:{epoch}")  # str seeds are stable across runs
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = batch_size * POOL_BATCHES  # a multiple of batch_size: only the very last batch is short
    batches: list[Batch] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def shard(batches: list[Batch], world_size: int) -> list[list[Batch]]:
    """Deal batches to processes round-robin. Every process gets the same number (data parallel
    steps must line up), so the first batches are dealt again to fill the last round."""
    per_rank = math.ceil(len(batches) / world_size) if batches else 0
    filled = [batches[i % len(batches)] for i in range(per_rank * world_size)] if batches else []
    return [filled[rank::world_size] for rank in range(world_size)]


@dataclass
class Schedule:
    """The micro-batches of every optimizer step for every process."""

    lengths: tuple[int, ...]
    batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    seed: int
    group_by_length: bool
    _epochs: dict[int, list[list[Batch]]] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def micro_batches_per_epoch(self) -> int:
        """Per process; equals plan.optimizer_steps' count."""
        return math.ceil(len(self.lengths) / (self.batch_size * self.world_size)) if self.lengths else 0

    @functools.cached_property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.gradient_accumulation_steps)

    def epoch(self, epoch: int) -> list[list[Batch]]:
        """Per process, the micro-batches of one epoch."""
        if epoch not in self._epochs:
            batches = epoch_batches(
                list(self.lengths), self.batch_size, seed=self.seed, epoch=epoch, group_by_length=self.group_by_length
            )
            self._epochs = {epoch: shard(batches, self.world_size)}  # epochs are visited in order
        return self._epochs[epoch]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index of the first micro-batch within it) where optimizer step `step` (0-based)
        starts. A short step ends each epoch."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return epoch, within * self.gradient_accumulation_steps

    def step(self, step: int) -> list[list[Batch]]:
        """Per process, the micro-batches of optimizer step `step` (0-based)."""
        epoch, start = self.position(step)
        return [rank_batches[start : start + self.gradient_accumulation_steps] for rank_batches in self.epoch(epoch)]

    def computed_tokens_per_epoch(self) -> int:
        """Tokens computed in one epoch over all processes, padding included."""
        return sum(padded_tokens(b, self.lengths) for rank in self.epoch(0) for b in rank)


def padded_tokens(batch: Batch, lengths: tuple[int, ...] | list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def real_tokens(batch: Batch, lengths: tuple[int, ...] | list[int]) -> int:
    return sum(lengths[i] for i in batch)


def label_tokens(batch: Batch, split: TokenizedSplit) -> int:
    """Tokens whose prediction is trained: every answer token after the first position."""
    return sum(len(split.input_ids[i]) - max(split.prompt_lengths[i], 1) for i in batch)


def collate(split: TokenizedSplit, batch: Batch, pad_token_id: int, device: Any) -> dict[str, Any]:
    """Right-padded tensors of one micro-batch: input_ids, attention_mask and labels (padding and
    prompt tokens are IGNORE_INDEX)."""
    import torch

    width = max(len(split.input_ids[i]) for i in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(batch):
        ids = split.input_ids[i]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(split.labels(i))
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention.to(device),
        "labels": labels.to(device),
    }


def evaluation_batches(lengths: list[int], batch_size: int, world_size: int, rank: int) -> list[Batch]:
    """Validation rows sorted by length (least padding; order does not matter for a mean), dealt
    to processes without repeats: every row is counted once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches[rank::world_size]
