"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states, fp16's loss scale
(when the run scales) and the training state, and the checks a checkpoint passes before a resume
uses it.

A checkpoint is written into a hidden staging folder (`checkpoints/.step-NNNNNNNN.partial`); its
last file, `complete.json`, records the size and SHA-256 of every other file, and only then is the
folder renamed to `checkpoints/step-NNNNNNNN`. So a run killed while writing one leaves the
previous checkpoint as the newest, and a folder whose files changed afterwards (a truncated copy, a
full disk, a stray edit) is found out. Every process saves its own RNG states; the main process
saves the rest (data-parallel replicas hold the same weights and optimizer state).

A resume (`restore_newest`) takes the newest checkpoint that passes `verify_checkpoint`: the marker,
every file's size and hash, state.json's keys and types, the tensors against the model's trainable
parameters, the optimizer state against the optimizer, the scheduler's step, the loss scaler's
state, the RNG files of every process. A damaged checkpoint is reported with the file and the
reason, and the one before it is tried.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from lora_recipes.atomic import widen_to_umask
from lora_recipes.errors import RuntimeFailure, UserError
from lora_recipes.model import loading as models
from lora_recipes.training.run_dir import CheckpointLayout, RunLayout, describe_os_error

if TYPE_CHECKING:
    from accelerate import Accelerator

    from lora_recipes.training.step import Trainables

COMPLETE_FORMAT = 1  # the layout of complete.json


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
    data_hashes: dict[str, str] = field(default_factory=dict)  # of the data trained on (checked on resume)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> TrainingState:
        """The state a checkpoint's state.json holds; ValueError says what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        known = {f.name: str(f.type) for f in fields(cls)}
        missing, extra = sorted(set(known) - set(data)), sorted(set(data) - set(known))
        if missing or extra:
            what = [f"missing {', '.join(missing)}"] if missing else []
            what += [f"unexpected {', '.join(extra)}"] if extra else []
            raise ValueError(f"its keys are not a training state's ({'; '.join(what)})")
        for name, kind in known.items():
            if not _has_type(data[name], kind):
                raise ValueError(f"{name} is {data[name]!r}, not {kind}")
        return cls(**data)


def _has_type(value: Any, kind: str) -> bool:
    if value is None:
        return kind.endswith("| None")
    base = kind.removesuffix(" | None")
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if base == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if base == "bool":
        return isinstance(value, bool)
    if base == "dict[str, str]":
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return False


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return RunLayout(run_dir).checkpoint(step)


_FOLDER = re.compile(r"^step-(\d{8,})$")


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """Every checkpoint folder (staging folders start with a dot and are left out), newest first,
    whether or not it is complete."""
    folder = RunLayout(run_dir).checkpoints
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _FOLDER.match(p.name) and p.is_dir()]
    return sorted(found, key=_step_of, reverse=True)


def _step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step-"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that has its completeness marker (not otherwise checked)."""
    done = [p for p in checkpoints_newest_first(run_dir) if CheckpointLayout(p).complete.is_file()]
    return done[0] if done else None


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


# -- writing -------------------------------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    """A file to write through that counts and hashes what passes, and keeps the operating
    system's error (torch.save reports a failed write as a RuntimeError without it)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            self.file.write(view)
        except OSError as exc:
            self.error = exc
            raise
        self.sha256.update(view)
        self.size += len(view)
        return len(view)


def _write_file(path: Path, write: Callable[[IO[bytes]], object]) -> dict[str, Any]:
    """Write `path` through `write`, flushed to disk; its size and SHA-256. An operating-system
    error comes out as an OSError naming `path`, whatever the writing library made of it."""
    try:
        with path.open("wb") as file:
            writer = _HashingWriter(file)
            try:
                write(writer)  # type: ignore[arg-type]
            except OSError:
                raise
            except Exception as exc:
                if writer.error is not None:
                    raise writer.error from exc
                raise
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return {"bytes": writer.size, "sha256": writer.sha256.hexdigest()}


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path))
    except Exception as exc:  # safetensors' own error type; its text carries the OS error number
        number = re.search(r"os error (\d+)", str(exc))
        if number is None:
            raise
        code = int(number.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc
    with path.open("rb") as file:
        os.fsync(file.fileno())
    return _file_record(path)


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    layout: RunLayout, state: TrainingState, trainables: Trainables, accelerator: Accelerator, keep: int
) -> Path:
    """Write a checkpoint at `state.step` (all processes call this), keep the newest `keep`. A
    write that fails (disk full, permissions) removes the half-written folder and raises a
    RuntimeFailure naming the file and the reason; the checkpoints before it stay."""
    final = layout.checkpoint(state.step)
    staging = CheckpointLayout(final.parent / f".{final.name}.partial")
    is_main, barrier = accelerator.is_main_process, accelerator.wait_for_everyone
    try:
        if is_main:
            shutil.rmtree(staging.folder, ignore_errors=True)
            staging.folder.mkdir(parents=True)
        barrier()
        rank = accelerator.process_index
        _write_file(staging.rng(rank), lambda f: torch.save(rng_states(), f))
        if is_main:
            files = {
                staging.weights.name: _write_safetensors(staging.weights, trainable_state(trainables.bare)),
                staging.optimizer.name: _write_file(
                    staging.optimizer, lambda f: torch.save(trainables.optimizer.state_dict(), f)
                ),
                staging.scheduler.name: _write_file(
                    staging.scheduler, lambda f: torch.save(trainables.scheduler.state_dict(), f)
                ),
                staging.state.name: _write_file(
                    staging.state, lambda f: f.write(json.dumps(state.to_json(), indent=2, allow_nan=False).encode())
                ),
            }
            if trainables.scaler is not None:
                scaler_state = trainables.scaler.state_dict()
                files[staging.scaler.name] = _write_file(staging.scaler, lambda f: torch.save(scaler_state, f))
        barrier()
        if is_main:
            for r in range(accelerator.num_processes):
                files[staging.rng(r).name] = _file_record(staging.rng(r))
            complete = {"format": COMPLETE_FORMAT, "step": state.step, "files": dict(sorted(files.items()))}
            text = json.dumps(complete, indent=2).encode()
            _write_file(staging.complete, lambda f: f.write(text))  # last: the folder is complete
            widen_to_umask(staging.folder)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging.folder, final)
    except OSError as exc:
        shutil.rmtree(staging.folder, ignore_errors=True)
        raise RuntimeFailure(_write_failed(layout, state.step, exc)) from exc
    if is_main:  # keep the newest `keep`; a newer one (damaged, skipped by the resume) is replaced in turn
        older = [p for p in checkpoints_newest_first(layout.root) if _step_of(p) < state.step]
        for old in older[max(keep - 1, 0) :]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _write_failed(layout: RunLayout, step: int, exc: OSError) -> str:
    previous = [p for p in checkpoints_newest_first(layout.root) if _step_of(p) < step]
    if previous:
        kept = f"the checkpoint before it, {previous[0].relative_to(layout.root)}, is kept"
    else:
        kept = "there is no earlier one: --resume starts from the beginning"
    return (
        f"{describe_os_error(exc, 'write')}. The checkpoint of step {step:,} was not written ({kept}); "
        f"fix that, then continue with `lora-recipes train --resume {layout.root}`"
    )


# -- reading and checking ----------------------------------------------------------------------------


class CheckpointDamaged(Exception):
    """A checkpoint that a resume must not use: which file, and why."""

    def __init__(self, folder: Path, file: str, why: str) -> None:
        super().__init__(f"{folder.name}/{file}: {why}")
        self.folder, self.file, self.why = folder, file, why


@dataclass
class CheckpointContents:
    """A checked checkpoint, read into memory, not yet restored."""

    folder: Path
    state: TrainingState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]  # this process's
    scaler: dict[str, Any] | None = None  # fp16 loss scaling's state, when the run scaled


def verify_checkpoint(folder: Path, trainables: Trainables, *, rank: int, world_size: int) -> CheckpointContents:
    """Read and check everything `save_checkpoint` wrote (see the module notes); raise
    `CheckpointDamaged` naming the first file that fails and why. A checkpoint of a run with
    another number of processes is a UserError: the run must resume with as many."""
    files = CheckpointLayout(folder)

    def damaged(file: Path | str, why: str) -> CheckpointDamaged:
        return CheckpointDamaged(folder, file if isinstance(file, str) else file.name, why)

    recorded = _read_complete(files, damaged)
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file():
            raise damaged(name, "missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            how = "truncated" if size < expected["bytes"] else "grown"
            raise damaged(name, f"{how}: {size:,} bytes where {expected['bytes']:,} were written")
        if _sha256(path) != expected["sha256"]:
            raise damaged(name, "changed since it was written (its SHA-256 differs from complete.json's)")

    try:
        state = TrainingState.from_json(json.loads(files.state.read_text(encoding="utf-8")))
    except OSError as exc:
        raise damaged(files.state, describe_os_error(exc, "read")) from exc
    except ValueError as exc:  # not JSON, or not a training state
        raise damaged(files.state, f"not a training state: {exc}") from exc
    if f"step-{state.step:08d}" != folder.name:
        raise damaged(files.state, f"says step {state.step:,}, but the folder is {folder.name}")
    if state.world_size != world_size:
        raise UserError(
            f"{folder}: this run trained with {state.world_size} process(es); resume it with the same number "
            f"(now {world_size}) so the data order and losses continue exactly"
        )
    needed = [files.weights, files.optimizer, files.scheduler, *(files.rng(r) for r in range(world_size))]
    for path in needed:
        if path.name not in recorded:
            raise damaged(path, "missing" if not path.exists() else "not listed in complete.json")

    weights = _read_weights(files.weights, trainables.bare, damaged)
    optimizer = _read_optimizer(files.optimizer, trainables, damaged)
    scheduler = _load_torch(files.scheduler, damaged)
    live_scheduler = trainables.scheduler.state_dict()
    if not isinstance(scheduler, dict) or set(scheduler) != set(live_scheduler):
        raise damaged(files.scheduler, "not the learning-rate schedule's state")
    if scheduler.get("last_epoch") != state.step:
        raise damaged(
            files.scheduler, f"is at step {scheduler.get('last_epoch')!r}, the training state at {state.step}"
        )
    rng: dict[str, Any] = {}
    for r in range(world_size):
        states = _load_torch(files.rng(r), damaged)
        if not isinstance(states, dict) or set(states) != {"python", "numpy", "torch", "cuda"}:
            raise damaged(files.rng(r), "not the random number generators' states")
        if r == rank:
            rng = states
    scaler = None
    if trainables.scaler is not None and files.scaler.name in recorded:
        # (a checkpoint from a device that did not scale, bf16 or float32, has none: the scaling starts afresh)
        scaler = _load_torch(files.scaler, damaged)
        if not isinstance(scaler, dict) or set(scaler) != set(trainables.scaler.state_dict()):
            raise damaged(files.scaler, "not the fp16 loss scaler's state")
    return CheckpointContents(folder, state, weights, optimizer, scheduler, rng, scaler)


def _read_complete(files: CheckpointLayout, damaged: Callable[..., CheckpointDamaged]) -> dict[str, dict[str, Any]]:
    if not files.complete.is_file():
        raise damaged(files.complete, "missing: the checkpoint was never finished (or an older lora-recipes wrote it)")
    try:
        record = json.loads(files.complete.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged(files.complete, f"unreadable ({exc})") from exc
    listed = record.get("files") if isinstance(record, dict) else None
    good = isinstance(listed, dict) and all(
        isinstance(name, str)
        and "/" not in name
        and isinstance(entry, dict)
        and isinstance(entry.get("bytes"), int)
        and isinstance(entry.get("sha256"), str)
        for name, entry in listed.items()
    )
    if not good or record.get("format") != COMPLETE_FORMAT or files.state.name not in listed:  # type: ignore[operator]
        raise damaged(files.complete, "not a completeness record this version writes")
    return listed  # type: ignore[return-value]


def _load_torch(path: Path, damaged: Callable[..., CheckpointDamaged]) -> Any:
    """torch.load with weights_only (no code in a checkpoint runs); any failure is damage. Onto the
    CPU: without map_location every rank would first rebuild rank 0's CUDA tensors on GPU 0; the
    optimizer and the model copy them onto their parameters' devices."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise damaged(path, f"unreadable ({first[:200]})") from exc


def _read_weights(
    path: Path, model: torch.nn.Module, damaged: Callable[..., CheckpointDamaged]
) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path), device="cpu")  # then copied onto each parameter's device
    except Exception as exc:  # safetensors' own error type
        raise damaged(path, f"not a readable safetensors file ({str(exc)[:200]})") from exc
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(expected):
        missing, extra = len(set(expected) - set(weights)), len(set(weights) - set(expected))
        raise damaged(
            path,
            f"holds other tensors than the model trains ({missing} missing, {extra} unexpected): "
            "another adapter's or model's weights?",
        )
    for name, param in expected.items():
        tensor = weights[name]
        if tensor.shape != param.shape or tensor.dtype != param.dtype:
            raise damaged(
                path,
                f"{name} is {tuple(tensor.shape)} {tensor.dtype}, the model's {tuple(param.shape)} {param.dtype}",
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise damaged(path, f"{name} holds NaN or infinity")
    return weights


# Optimizer state entries shaped like their parameter (torch's Adam, AdamW and SGD; bitsandbytes'
# 8-bit states). Other entries (steps, block scales) are left to the optimizer.
_PARAMETER_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "state1", "state2")


def _read_optimizer(path: Path, trainables: Trainables, damaged: Callable[..., CheckpointDamaged]) -> dict[str, Any]:
    saved = _load_torch(path, damaged)
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        raise damaged(path, "not an optimizer state")
    groups, live = saved["param_groups"], trainables.optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(live):
        raise damaged(path, "its parameter groups are not the optimizer's")
    for group, live_group in zip(groups, live, strict=True):
        if not isinstance(group, dict) or len(group.get("params") or ()) != len(live_group["params"]):
            raise damaged(path, "its parameter groups are not the optimizer's")
    params = [p for g in live for p in g["params"]]
    state = saved["state"]
    if not isinstance(state, dict):
        raise damaged(path, "not an optimizer state")
    for index, entries in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entries, dict):
            raise damaged(path, f"its state names a parameter {index!r} the optimizer does not have")
        for key in _PARAMETER_SHAPED:
            value = entries.get(key)
            if isinstance(value, torch.Tensor) and value.shape != params[index].shape:
                raise damaged(
                    path, f"its {key} of parameter {index} is {tuple(value.shape)}, not {tuple(params[index].shape)}"
                )
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise damaged(path, f"its {key} of parameter {index} holds NaN or infinity")
    return saved


def restore(contents: CheckpointContents, trainables: Trainables) -> None:
    """Put a checked checkpoint into the live objects; `CheckpointDamaged` if they refuse it (all
    trainable weights, the whole optimizer and scheduler state are replaced, so an earlier
    checkpoint restored after a refusal leaves nothing of this one)."""
    folder = contents.folder
    try:
        trainables.bare.load_state_dict(contents.weights, strict=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointDamaged(folder, CheckpointLayout(folder).weights.name, str(exc)[:200]) from exc
    try:
        models.load_optimizer_state(trainables.optimizer, contents.optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointDamaged(folder, CheckpointLayout(folder).optimizer.name, str(exc)[:200]) from exc
    try:
        trainables.scheduler.load_state_dict(contents.scheduler)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointDamaged(folder, CheckpointLayout(folder).scheduler.name, str(exc)[:200]) from exc
    if contents.scaler is not None:
        try:
            trainables.scaler.load_state_dict(contents.scaler)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointDamaged(folder, CheckpointLayout(folder).scaler.name, str(exc)[:200]) from exc
    try:
        set_rng_states(contents.rng)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointDamaged(folder, "rng-*.pt", f"cannot be restored ({str(exc)[:200]})") from exc


@dataclass(frozen=True)
class Restored:
    state: TrainingState
    folder: Path
    skipped: list[CheckpointDamaged]  # newer checkpoints that were damaged


class NoGoodCheckpoint(RuntimeFailure):
    """Every checkpoint of the run is damaged."""

    def __init__(self, run_dir: Path, damage: list[CheckpointDamaged]) -> None:
        layout = RunLayout(run_dir)
        listed = "; ".join(str(d) for d in damage)
        super().__init__(
            f"--resume {run_dir}: no checkpoint can be used, every one is damaged ({listed}). Nothing was changed. "
            f"To train again from the start: `lora-recipes train {layout.resolved_recipe} --run-dir NEW_FOLDER`, "
            f"or replace this run with `--run-dir {run_dir} --overwrite`"
        )
        self.damage = damage


def restore_newest(run_dir: Path, trainables: Trainables, *, rank: int, world_size: int) -> Restored | None:
    """Restore the newest checkpoint that passes `verify_checkpoint` into the live objects (None:
    the run has no checkpoint yet). Raises `NoGoodCheckpoint` when it has some and none passes."""
    candidates = checkpoints_newest_first(run_dir)
    if not candidates:
        return None
    skipped: list[CheckpointDamaged] = []
    for folder in candidates:
        try:
            contents = verify_checkpoint(folder, trainables, rank=rank, world_size=world_size)
            restore(contents, trainables)
        except CheckpointDamaged as damage:
            skipped.append(damage)
            continue
        return Restored(contents.state, folder, skipped)
    raise NoGoodCheckpoint(run_dir, skipped)


def load_checkpoint(folder: Path, trainables: Trainables, *, rank: int, world_size: int) -> TrainingState:
    """Check and restore one checkpoint; return its training state (CheckpointDamaged if it fails)."""
    contents = verify_checkpoint(folder, trainables, rank=rank, world_size=world_size)
    restore(contents, trainables)
    return contents.state
