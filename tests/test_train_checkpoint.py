"""Checkpoints without a model: the completeness record written last, every kind of damage found
(with the file and the reason) and the checkpoint before it used, and writes that fail for real
(a file size limit, a full disk) named with their path instead of a traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lora_recipes.errors import UserError
from lora_recipes.training import checkpoint
from lora_recipes.training.checkpoint import NoGoodCheckpoint, TrainingState
from lora_recipes.training.run_dir import CheckpointLayout, RunLayout
from lora_recipes.training.step import Trainables


class Adapted(torch.nn.Module):
    """A frozen layer with a trainable low-rank pair, like a LoRA layer."""

    def __init__(self, width: int = 8, rank: int = 2) -> None:
        super().__init__()
        self.base = torch.nn.Linear(width, width)
        self.base.requires_grad_(False)
        self.lora_A = torch.nn.Linear(width, rank, bias=False)
        self.lora_B = torch.nn.Linear(rank, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x))


@dataclass
class OneProcess:
    """The parts of accelerate's Accelerator a checkpoint uses, for one process."""

    is_main_process: bool = True
    process_index: int = 0
    num_processes: int = 1

    def wait_for_everyone(self) -> None:
        pass


def trainables(width: int = 8, rank: int = 2, seed: int = 0) -> Trainables:
    torch.manual_seed(seed)
    model = Adapted(width, rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return Trainables(model, model, optimizer, scheduler, float("inf"), False)


def step(t: Trainables, state: TrainingState) -> None:
    x = torch.randn(4, t.bare.base.in_features)  # type: ignore[union-attr]
    t.model(x).pow(2).mean().backward()
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad()
    state.step += 1


def train_with_checkpoints(run_dir: Path, steps: tuple[int, ...], keep: int = 3, **sizes: int) -> Trainables:
    t = trainables(**sizes)
    state = TrainingState(data_hashes={"train": "abc"})
    for target in steps:
        while state.step < target:
            step(t, state)
        checkpoint.save_checkpoint(RunLayout(run_dir), state, t, OneProcess(), keep)  # type: ignore[arg-type]
    return t


def weights(t: Trainables) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t.bare.named_parameters() if p.requires_grad}


def reseal(folder: Path) -> None:
    """Rewrite complete.json to match the files as they are now: damage that the hashes would
    otherwise catch first, left for the deeper checks."""
    files = CheckpointLayout(folder)
    record = json.loads(files.complete.read_text())
    record["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": checkpoint._sha256(p)}
        for p in sorted(folder.iterdir())
        if p.name != files.complete.name
    }
    files.complete.write_text(json.dumps(record))


def test_a_checkpoint_records_every_file_and_restores_exactly(tmp_path: Path) -> None:
    t = train_with_checkpoints(tmp_path, (2, 4))
    folder = checkpoint.checkpoint_dir(tmp_path, 4)
    record = json.loads(CheckpointLayout(folder).complete.read_text())
    names = {"state.json", "trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng-0.pt"}
    assert set(record["files"]) == names and record["step"] == 4
    for name, entry in record["files"].items():
        assert entry == {"bytes": (folder / name).stat().st_size, "sha256": checkpoint._sha256(folder / name)}
    state = json.loads(CheckpointLayout(folder).state.read_text())
    assert state["data_hashes"] == {"train": "abc"} and state["step"] == 4
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no staging folder left

    saved = weights(t)
    fresh = trainables(seed=1)
    restored = checkpoint.restore_newest(tmp_path, fresh, rank=0, world_size=1)
    assert restored is not None and restored.folder == folder and restored.skipped == []
    assert all(torch.equal(saved[n], w) for n, w in weights(fresh).items())
    assert fresh.scheduler.state_dict()["last_epoch"] == 4


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_shapes(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({n: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for n, v in tensors.items()}, str(path))


def extend_state(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "extra": 1}, indent=2))


# kind: (damage, the file reported, words of the reason with the hashes checked, and resealed)
DAMAGE: dict[str, tuple[Any, str, str, str]] = {
    "truncated safetensors": (truncate, "trainable.safetensors", "truncated", "not a readable safetensors"),
    "garbage optimizer": (
        lambda p: p.write_bytes(os.urandom(3000)),
        "optimizer.pt",
        "bytes where",
        "unreadable",
    ),
    "broken state.json": (lambda p: p.write_text('{"step": 4,'), "state.json", "bytes where", "not a training state"),
    "extended state.json": (extend_state, "state.json", "grown", "unexpected extra"),
    "missing RNG file": (lambda p: p.unlink(), "rng-0.pt", "missing", "missing"),
    "wrong-shape tensors": (wrong_shapes, "trainable.safetensors", "bytes where", "torch.float32, the model's ("),
    "empty scheduler file": (lambda p: p.write_bytes(b""), "scheduler.pt", "truncated", "unreadable"),
}


def scaling(t: Trainables, **state: float) -> Trainables:
    """`t` with torch's fp16 loss scaler (as accelerate makes it), in the state given."""
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict({**scaler.state_dict(), **state})
    return dataclasses.replace(t, scaler=scaler)


def test_the_fp16_loss_scale_is_checkpointed_and_restored(tmp_path: Path) -> None:
    """A resumed fp16 run continues with the loss scale it had (a fresh 65,536 would overflow and
    skip steps the uninterrupted run took)."""
    t = scaling(trainables(), scale=1024.0, _growth_tracker=7)
    state = TrainingState(data_hashes={"train": "abc"})
    step(t, state)
    checkpoint.save_checkpoint(RunLayout(tmp_path), state, t, OneProcess(), 2)  # type: ignore[arg-type]
    folder = checkpoint.checkpoint_dir(tmp_path, 1)
    assert "scaler.pt" in json.loads(CheckpointLayout(folder).complete.read_text())["files"]
    fresh = scaling(trainables(seed=1))
    assert fresh.scaler.state_dict()["scale"] == 65536.0
    assert checkpoint.restore_newest(tmp_path, fresh, rank=0, world_size=1) is not None
    assert fresh.scaler.state_dict() == t.scaler.state_dict()
    assert fresh.scaler.state_dict()["scale"] == 1024.0 and fresh.scaler.state_dict()["_growth_tracker"] == 7
    # Resumed on a device that does not scale (bf16): the scale is not needed and not in the way.
    assert checkpoint.restore_newest(tmp_path, trainables(seed=1), rank=0, world_size=1) is not None
    # A scaler file that is not a scaler's state is damage, reported by name.
    CheckpointLayout(folder).scaler.write_bytes(b"not a tensor file")
    reseal(folder)
    with pytest.raises(NoGoodCheckpoint, match=r"scaler\.pt"):
        checkpoint.restore_newest(tmp_path, scaling(trainables(seed=1)), rank=0, world_size=1)


@pytest.mark.parametrize("resealed", [False, True], ids=["hashes", "deep checks"])
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_reported_and_the_one_before_used(
    tmp_path: Path, kind: str, resealed: bool
) -> None:
    damage, file, hashed_why, deep_why = DAMAGE[kind]
    t = train_with_checkpoints(tmp_path / "a", (2,))
    at_2 = weights(t)
    shutil.rmtree(tmp_path / "a")
    train_with_checkpoints(tmp_path, (2, 4))
    newest = checkpoint.checkpoint_dir(tmp_path, 4)
    damage(newest / file)
    if resealed:
        reseal(newest)

    fresh = trainables(seed=1)
    restored = checkpoint.restore_newest(tmp_path, fresh, rank=0, world_size=1)
    assert restored is not None and restored.folder.name == "step-00000002"
    [skipped] = restored.skipped
    assert skipped.folder == newest and skipped.file == file
    assert (deep_why if resealed else hashed_why) in skipped.why, skipped.why
    assert all(torch.equal(at_2[n], w) for n, w in weights(fresh).items())
    assert restored.state.step == 2 and fresh.scheduler.state_dict()["last_epoch"] == 2


def test_an_unfinished_checkpoint_and_wrong_state_are_damage(tmp_path: Path) -> None:
    train_with_checkpoints(tmp_path, (2, 4, 6))
    CheckpointLayout(checkpoint.checkpoint_dir(tmp_path, 6)).complete.unlink()
    state4 = CheckpointLayout(checkpoint.checkpoint_dir(tmp_path, 4)).state
    state4.write_text(json.dumps({**json.loads(state4.read_text()), "step": "four"}))
    reseal(state4.parent)
    restored = checkpoint.restore_newest(tmp_path, trainables(), rank=0, world_size=1)
    assert restored is not None and restored.folder.name == "step-00000002"
    assert [(d.folder.name, d.file) for d in restored.skipped] == [
        ("step-00000006", "complete.json"),
        ("step-00000004", "state.json"),
    ]
    assert "never finished" in restored.skipped[0].why and "step is 'four'" in restored.skipped[1].why


def test_no_good_checkpoint_names_every_damaged_one_and_how_to_start_over(tmp_path: Path) -> None:
    train_with_checkpoints(tmp_path, (2, 4))
    for s in (2, 4):
        truncate(checkpoint.checkpoint_dir(tmp_path, s) / "optimizer.pt")
    with pytest.raises(NoGoodCheckpoint) as caught:
        checkpoint.restore_newest(tmp_path, trainables(), rank=0, world_size=1)
    message = str(caught.value)
    assert caught.value.exit_code == 1
    assert "step-00000004/optimizer.pt: truncated" in message and "step-00000002/optimizer.pt: truncated" in message
    assert "--run-dir NEW_FOLDER" in message and "--overwrite" in message
    assert checkpoint.restore_newest(tmp_path / "none", trainables(), rank=0, world_size=1) is None


def test_another_number_of_processes_is_a_user_error(tmp_path: Path) -> None:
    train_with_checkpoints(tmp_path, (2,))
    with pytest.raises(UserError, match="trained with 1 process"):
        checkpoint.restore_newest(tmp_path, trainables(), rank=0, world_size=2)


def test_a_different_adapter_is_damage_not_a_crash(tmp_path: Path) -> None:
    train_with_checkpoints(tmp_path, (2,))
    with pytest.raises(NoGoodCheckpoint, match=r"lora_A.weight is \(2, 8\).*\(4, 8\)"):
        checkpoint.restore_newest(tmp_path, trainables(rank=4), rank=0, world_size=1)


def test_training_state_json_is_strict() -> None:
    good = TrainingState(step=3, data_hashes={"train": "x"}).to_json()
    assert TrainingState.from_json(good) == TrainingState(step=3, data_hashes={"train": "x"})
    for bad, words in (
        ([], "not a JSON object"),
        ({**good, "x": 1}, "unexpected x"),
        ({k: v for k, v in good.items() if k != "step"}, "missing step"),
        ({**good, "best_validation_loss": float("nan")}, "best_validation_loss"),
        ({**good, "stopped_early": 1}, "stopped_early"),
        ({**good, "step": -1}, "step"),
    ):
        with pytest.raises(ValueError, match=words):
            TrainingState.from_json(bad)


def test_later_checkpoints_are_pruned_but_a_newer_damaged_one_is_only_replaced(tmp_path: Path) -> None:
    train_with_checkpoints(tmp_path, (2, 4, 6, 8), keep=2)
    assert [p.name for p in checkpoint.checkpoints_newest_first(tmp_path)] == ["step-00000008", "step-00000006"]


# -- writes that fail for real ---------------------------------------------------------------------

WRITER = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_train_checkpoint import train_with_checkpoints, trainables, OneProcess, step
from lora_recipes.errors import LoraRecipesError
from lora_recipes.training import checkpoint
from lora_recipes.training.checkpoint import TrainingState
from lora_recipes.training.run_dir import RunLayout

run_dir, limit = Path(sys.argv[1]), int(sys.argv[2])
t = train_with_checkpoints(run_dir, (1,), width=256, rank=64)
state = TrainingState(step=1)
step(t, state)
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    checkpoint.save_checkpoint(RunLayout(run_dir), state, t, OneProcess(), 3)
except LoraRecipesError as exc:
    print("error:", exc)
    sys.exit(exc.exit_code)
"""


def write_in_subprocess(run_dir: Path, limit: int, wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    script = WRITER.format(tests=str(Path(__file__).parent))
    command = [*(wrap or []), sys.executable, "-c", script, str(run_dir), str(limit)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("limit", "file"),
    [(40_000, "trainable.safetensors"), (200_000, "optimizer.pt")],
    ids=["safetensors", "torch.save"],
)
def test_a_file_size_limit_while_checkpointing_names_the_file(tmp_path: Path, limit: int, file: str) -> None:
    # weights 128 KiB, optimizer state twice that: the limit stops one of them half-way.
    done = write_in_subprocess(tmp_path, limit)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    staging = tmp_path / "checkpoints" / ".step-00000002.partial"
    assert f"could not write {staging / file}: file too large" in done.stdout
    assert "checkpoint of step 2 was not written (the checkpoint before it, checkpoints/step-00000001, is kept)" in (
        done.stdout
    )
    assert f"--resume {tmp_path}" in done.stdout
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]  # staging removed
    assert checkpoint.restore_newest(tmp_path, trainables(width=256, rank=64), rank=0, world_size=1) is not None


def test_a_full_disk_while_checkpointing_says_disk_full(tmp_path: Path) -> None:
    """A real ENOSPC: the run directory on a 500 KiB tmpfs (room for one checkpoint of 410 KiB,
    not two), mounted in a private mount namespace
    (needs `unshare -m` with the right to mount; skipped elsewhere)."""
    run_dir = tmp_path / "small"
    run_dir.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("unshare -m is not available")
    mount = f'mount -t tmpfs -o size=500k tmpfs {run_dir} && exec "$@"'
    done = write_in_subprocess(run_dir, 0, wrap=["unshare", "-m", "sh", "-c", mount, "sh"])
    if "mount:" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "disk full (no space left on the device)" in done.stdout and ".step-00000002.partial/" in done.stdout


def test_a_validation_loss_that_is_not_finite_is_never_the_best() -> None:
    from lora_recipes.training.validation import judge

    state = TrainingState(step=2)
    assert not judge(state, float("nan"), early_stop=-1)  # not even the first
    assert state.best_validation_loss is None and state.validations_since_best == 1
    state.step = 4
    assert judge(state, 2.0, early_stop=-1) and state.best_step == 4
    for bad in (float("nan"), float("inf"), float("-inf")):
        state.step += 2
        assert not judge(state, bad, early_stop=-1)
    assert state.best_validation_loss == 2.0 and state.best_step == 4
    TrainingState.from_json(state.to_json())  # and the state stays valid JSON
