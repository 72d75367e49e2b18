"""Batch order, sharding and the learning-rate schedule: pure functions, no model."""

from __future__ import annotations

import random

import pytest

from lora_recipes.data.types import IGNORE_INDEX, TokenizedSplit
from lora_recipes.planning.plan import optimizer_steps
from lora_recipes.training import batching
from lora_recipes.training.step import lr_factor


def long_tailed_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(8 + int(rng.paretovariate(1.1) * 10), 600) for _ in range(n)]


@pytest.mark.parametrize("group", [True, False])
def test_every_row_is_trained_once_per_epoch(group: bool) -> None:
    lengths = long_tailed_lengths(1001)
    for epoch in range(3):
        batches = batching.epoch_batches(lengths, 8, seed=1, epoch=epoch, group_by_length=group)
        rows = sorted(i for b in batches for i in b)
        assert rows == list(range(1001))
        assert all(len(b) == 8 for b in batches[:-1] if len(b) != 1001 % 8) and sum(len(b) < 8 for b in batches) <= 1


def test_length_grouping_cuts_padding_and_still_shuffles() -> None:
    lengths = long_tailed_lengths(4000)
    real = sum(lengths)

    def padding(group: bool, epoch: int = 0) -> float:
        batches = batching.epoch_batches(lengths, 8, seed=3, epoch=epoch, group_by_length=group)
        return 1 - real / sum(batching.padded_tokens(b, lengths) for b in batches)

    assert padding(False) > 0.4  # long-tailed data padded to each batch's longest row
    assert padding(True) < 0.1
    first = batching.epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=True)
    again = batching.epoch_batches(lengths, 8, seed=3, epoch=0, group_by_length=True)
    other_epoch = batching.epoch_batches(lengths, 8, seed=3, epoch=1, group_by_length=True)
    other_seed = batching.epoch_batches(lengths, 8, seed=4, epoch=0, group_by_length=True)
    assert first == again
    assert first != other_epoch and first != other_seed
    widths = [max(lengths[i] for i in b) for b in first]
    assert widths != sorted(widths, reverse=True) and widths != sorted(widths)  # batch order is shuffled


def test_shards_are_equal_and_cover_every_batch() -> None:
    batches = [[i] for i in range(7)]
    shards = batching.shard(batches, 3)
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(b[0] for s in shards for b in s) == [0, 0, 1, 1, 2, 3, 4, 5, 6]  # two batches dealt again


@pytest.mark.parametrize(
    ("rows", "batch", "accum", "world"), [(100, 1, 16, 1), (100, 4, 3, 2), (7, 2, 2, 4), (64, 8, 1, 1)]
)
def test_schedule_agrees_with_the_plan(rows: int, batch: int, accum: int, world: int) -> None:
    schedule = batching.Schedule(tuple(long_tailed_lengths(rows)), batch, accum, world, 42, True)
    plan = optimizer_steps(
        train_rows=rows,
        batch_size=batch,
        gradient_accumulation_steps=accum,
        processes=world,
        epochs=2,
        train_steps=None,
        max_train_steps=10_000,
        eval_steps=10,
    )
    assert schedule.steps_per_epoch == plan.per_epoch
    seen = [i for step in range(schedule.steps_per_epoch) for rank in schedule.step(step) for b in rank for i in b]
    assert set(seen) == set(range(rows))  # one epoch of steps visits every row
    assert all(len(rank) <= accum for step in range(plan.total) for rank in schedule.step(step))
    assert schedule.position(schedule.steps_per_epoch) == (1, 0)


def test_collate_pads_right_and_masks_prompt_and_padding() -> None:
    split = TokenizedSplit("train", [[5, 6, 7, 8], [9, 10]], [2, 1], [0, 1])
    inputs = batching.collate(split, [0, 1], pad_token_id=3, device="cpu")
    assert inputs["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 3, 3]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert inputs["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX, 10] + [IGNORE_INDEX] * 2]
    assert batching.label_tokens([0, 1], split) == 3  # 7, 8 and 10 are predicted


def test_learning_rate_schedules() -> None:
    total, warmup = 100, 10
    assert [lr_factor(s, total, warmup, "cosine") for s in (0, 5)] == [0.0, 0.5]
    assert lr_factor(warmup, total, warmup, "cosine") == 1.0
    assert lr_factor(55, total, warmup, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, total, warmup, "cosine") < 0.01
    assert lr_factor(55, total, warmup, "linear") == pytest.approx(0.5)
    assert lr_factor(99, total, warmup, "none") == 1.0
    assert lr_factor(0, total, 0, "cosine") == 1.0
