"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and progress.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lora_recipes.errors import UserError
from lora_recipes.training.run_dir import write_json_atomic

CHECKPOINTS = "checkpoints"
STATE = "state.json"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint as state.json."""

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
    def from_json(cls, data: dict[str, Any]) -> Progress:
        return cls(**data)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:08d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (staging folders start with a dot and are skipped)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step-*") if (p / STATE).is_file()]
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
    run_dir: Path,
    progress: Progress,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    rank: int,
    is_main: bool,
    barrier: Callable[[], None],
    keep: int,
) -> Path:
    """Write a checkpoint at `progress.step` (all processes call this), keep the newest `keep`."""
    from safetensors.torch import save_file

    final = checkpoint_dir(run_dir, progress.step)
    staging = final.parent / f".{final.name}.partial"
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    torch.save(rng_states(), staging / f"rng-{rank}.pt")
    if is_main:
        save_file(trainable_state(model), str(staging / WEIGHTS))
        torch.save(optimizer.state_dict(), staging / OPTIMIZER)
        torch.save(scheduler.state_dict(), staging / SCHEDULER)
        write_json_atomic(staging / STATE, progress.to_json())  # last: marks the folder complete
    barrier()
    if is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        older = sorted((p for p in final.parent.glob("step-*") if p != final), key=lambda p: p.name)
        for old in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(
    folder: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any, rank: int, world_size: int
) -> Progress:
    """Restore everything `save_checkpoint` wrote into the live objects; return the progress."""
    from safetensors.torch import load_file

    progress = Progress.from_json(json.loads((folder / STATE).read_text(encoding="utf-8")))
    if progress.world_size != world_size:
        raise UserError(
            f"{folder}: this run trained with {progress.world_size} process(es); resume it with the same number "
            f"(now {world_size}) so the data order and losses continue exactly"
        )
    weights = load_file(str(folder / WEIGHTS))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise UserError(f"{folder}: its weights do not match the model being resumed (different adapter settings?)")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / SCHEDULER, weights_only=True))
    set_rng_states(torch.load(folder / f"rng-{rank}.pt", weights_only=True))
    return progress
