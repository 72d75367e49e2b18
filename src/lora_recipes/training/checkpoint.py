"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and the training
state.

A checkpoint is written into a hidden staging folder and renamed to `checkpoints/step-NNNNNNNN`
only when every file is in it, so a run killed while writing one (kill -9, power loss) leaves
the previous checkpoint as the newest and the half-written one is never picked up. Every process
saves its own RNG states; the main process saves the rest (data-parallel replicas hold the same
weights and optimizer state).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lora_recipes.errors import UserError
from lora_recipes.training.run_dir import CheckpointLayout, RunLayout, write_json_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator

    from lora_recipes.training.step import Trainables


@dataclass
class TrainingState:
    """Where training stands: the counters a resumed run continues from, saved in every
    checkpoint (`CheckpointLayout.state`)."""

    step: int = 0  # optimizer steps done
    world_size: int = 1
    best_validation_loss: float | None = None
    best_step: int | None = None
    validations_since_best: int = 0
    stopped_early: bool = False
    metrics_lines: int = 0  # lines of metrics.jsonl written up to this point
    seconds: float = 0.0  # wall time of the run so far (earlier sessions included)
    train_seconds: float = 0.0  # of which in training steps (no loading, validation or saving)
    tokens_real: int = 0  # non-padding tokens trained, all processes
    tokens_computed: int = 0  # tokens computed, padding included

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        return cls(**data)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return RunLayout(run_dir).checkpoint(step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (staging folders start with a dot and are skipped)."""
    folder = RunLayout(run_dir).checkpoints
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step-*") if CheckpointLayout(p).state.is_file()]
    return max(done, key=lambda p: p.name) if done else None


def rng_states() -> dict[str, Any]:
    import numpy as np

    np_state: Any = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    layout: RunLayout, state: TrainingState, trainables: Trainables, accelerator: Accelerator, keep: int
) -> Path:
    """Write a checkpoint at `state.step` (all processes call this), keep the newest `keep`."""
    from safetensors.torch import save_file

    final = layout.checkpoint(state.step)
    staging = CheckpointLayout(final.parent / f".{final.name}.partial")
    is_main, barrier = accelerator.is_main_process, accelerator.wait_for_everyone
    if is_main:
        shutil.rmtree(staging.folder, ignore_errors=True)
        staging.folder.mkdir(parents=True)
    barrier()
    torch.save(rng_states(), staging.rng(accelerator.process_index))
    if is_main:
        save_file(trainable_state(trainables.bare), str(staging.weights))
        torch.save(trainables.optimizer.state_dict(), staging.optimizer)
        torch.save(trainables.scheduler.state_dict(), staging.scheduler)
        write_json_atomic(staging.state, state.to_json())  # last: marks the folder complete
    barrier()
    if is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging.folder, final)
        older = sorted((p for p in final.parent.glob("step-*") if p != final), key=lambda p: p.name)
        for old in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(folder: Path, trainables: Trainables, *, rank: int, world_size: int) -> TrainingState:
    """Restore everything `save_checkpoint` wrote into the live objects; return the training state."""
    from safetensors.torch import load_file

    files = CheckpointLayout(folder)
    state = TrainingState.from_json(json.loads(files.state.read_text(encoding="utf-8")))
    if state.world_size != world_size:
        raise UserError(
            f"{folder}: this run trained with {state.world_size} process(es); resume it with the same number "
            f"(now {world_size}) so the data order and losses continue exactly"
        )
    weights = load_file(str(files.weights))
    model = trainables.bare
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise UserError(f"{folder}: its weights do not match the model being resumed (different adapter settings?)")
    model.load_state_dict(weights, strict=False)
    trainables.optimizer.load_state_dict(torch.load(files.optimizer, weights_only=True))
    trainables.scheduler.load_state_dict(torch.load(files.scheduler, weights_only=True))
    set_rng_states(torch.load(files.rng(rank), weights_only=True))
    return state
