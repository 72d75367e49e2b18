"""One optimizer step (`step.train_step`) on the tiny random Mistral, 4-bit NF4 with LoRA on the
CPU: the loss it reports is the answer-token loss of the step's rows, only the adapter moves, and
the token counts add up."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from lora_recipes.data.types import IGNORE_INDEX, TokenizedSplit
from lora_recipes.model import loading as models
from lora_recipes.model.source import ModelSource
from lora_recipes.training import batching
from lora_recipes.training.step import Trainables, TrainingData, train_step

pytestmark = pytest.mark.slow

LEARNING_RATE = 0.01


def rows(count: int = 8, seed: int = 0) -> TokenizedSplit:
    """Token ids of varied length (4 to 24), the first third of each a prompt."""
    rng = random.Random(seed)
    input_ids = [[rng.randrange(4, 300) for _ in range(rng.randint(4, 24))] for _ in range(count)]
    return TokenizedSplit("train", input_ids, [len(ids) // 3 for ids in input_ids], list(range(count)))


def set_up(model_dir: Path, logits_mask: bool) -> tuple[Any, Trainables]:
    from accelerate import Accelerator

    model = models.load_base_model(ModelSource("local", str(model_dir), None), bits=4, device="cpu")
    model = models.prepare_for_training(model, quantized=True, gradient_checkpointing=False)
    torch.manual_seed(0)
    model = models.attach_lora(model, r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj"), bias="none")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = models.build_optimizer(
        params, type="adamw", lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    accelerator = Accelerator(cpu=True, device_placement=False)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    bare = accelerator.unwrap_model(wrapped)
    return accelerator, Trainables(wrapped, bare, optimizer, scheduler, math.inf, logits_mask)


def direct_loss(model: torch.nn.Module, split: TokenizedSplit, micro_batches: list[list[int]]) -> float:
    """The mean answer-token loss of the rows, by the model's own (transformers') loss."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in micro_batches:
            inputs = batching.collate(split, batch, 0, "cpu")
            n = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**inputs, use_cache=False).loss.item() * n
            count += n
    return total / count


@pytest.mark.parametrize("logits_mask", [True, False])
def test_one_step_reports_the_loss_of_its_rows_and_moves_only_the_adapter(
    tiny_model_dir: Path, logits_mask: bool
) -> None:
    split = rows()
    schedule = batching.Schedule(tuple(split.lengths), 2, 2, 1, 0, True)  # 2 micro-batches of 2 rows a step
    accelerator, trainables = set_up(tiny_model_dir, logits_mask)
    micro_batches = schedule.step(0)[0]
    assert len(micro_batches) == 2
    expected = direct_loss(trainables.bare, split, micro_batches)
    before = {n: p.detach().clone() for n, p in trainables.bare.state_dict().items()}

    result = train_step(accelerator, trainables, TrainingData(split, schedule, 0), 0)

    assert math.isfinite(result.loss) and result.loss == pytest.approx(expected, rel=1e-6)
    assert result.grad_norm > 0 and result.learning_rate == LEARNING_RATE
    stepped = [row for batch in micro_batches for row in batch]
    assert result.tokens_real == sum(split.lengths[i] for i in stepped)
    assert result.tokens_computed == sum(len(b) * max(split.lengths[i] for i in b) for b in micro_batches)
    after = trainables.bare.state_dict()
    changed = {n for n, value in before.items() if not torch.equal(value, after[n])}
    # LoRA B starts at 0, so A has no gradient on the first step: B moves, nothing else does.
    assert changed == {n for n in before if "lora_B" in n}
    assert all(p.grad is None for p in trainables.params)  # gradients cleared for the next step


def test_steps_follow_the_schedule(tiny_model_dir: Path) -> None:
    split = rows(count=12, seed=1)
    schedule = batching.Schedule(tuple(split.lengths), 4, 1, 1, 0, False)
    accelerator, trainables = set_up(tiny_model_dir, True)
    data = TrainingData(split, schedule, 0)
    results = [train_step(accelerator, trainables, data, step) for step in range(3)]  # one epoch
    assert sum(r.tokens_real for r in results) == sum(split.lengths)
    assert all(math.isfinite(r.loss) and r.grad_norm > 0 for r in results)
