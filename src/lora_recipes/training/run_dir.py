"""Run directories: the name of every file in one (`RunLayout`), naming new ones, the
never-overwrite rules, the lock that keeps one `train` per directory, and atomic writes.

Nothing heavy is imported here: the CLI checks a run directory before torch is loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lora_recipes.errors import UserError
from lora_recipes.model.source import PACKAGE_PREFIX
from lora_recipes.recipe.loader import LoadedRecipe, load_recipe


@dataclass(frozen=True)
class RunLayout:
    """Where everything of a training run lives: the one place that names its files."""

    root: Path

    @property
    def adapter(self) -> Path:
        """The PEFT adapter of the best validation step."""
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        """A full fine-tune's model, instead of `adapter`."""
        return self.root / "model"

    def result(self, *, full: bool) -> Path:
        """What the run produces: `model` for a full fine-tune, else `adapter`."""
        return self.model if full else self.adapter

    @property
    def resolved_recipe(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def metrics(self) -> Path:
        """One JSON record per line: training steps and validations."""
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def cost_report_json(self) -> Path:
        """Written last: a run directory that has it is finished."""
        return self.root / "cost_report.json"

    @property
    def cost_report_md(self) -> Path:
        return self.root / "cost_report.md"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint written after optimizer step `step` (see `CheckpointLayout`)."""
        return self.checkpoints / f"step-{step:08d}"

    @property
    def lock(self) -> Path:
        """Held by the `train` writing the run: its PID and host."""
        return self.root / ".lock"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files, when the recipe reports to TensorBoard."""
        return self.root / "tensorboard"


@dataclass(frozen=True)
class CheckpointLayout:
    """The files of one checkpoint folder (`RunLayout.checkpoint`)."""

    folder: Path

    @property
    def state(self) -> Path:
        """The training state (steps, best loss, counters); written last, it marks the folder complete."""
        return self.folder / "state.json"

    @property
    def weights(self) -> Path:
        """The trainable weights."""
        return self.folder / "trainable.safetensors"

    @property
    def optimizer(self) -> Path:
        return self.folder / "optimizer.pt"

    @property
    def scheduler(self) -> Path:
        return self.folder / "scheduler.pt"

    def rng(self, rank: int) -> Path:
        """The random number generator states of process `rank`."""
        return self.folder / f"rng-{rank}.pt"


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file to write `path` through: a temporary file in the same folder that, when the block
    ends without error, is flushed to disk and renamed over `path`, so a reader (or a run killed
    half-way) sees the old file or the new one, never a torn one. On error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")


def replace_files_from(staging: Path, target: Path) -> None:
    """Move every file of `staging` into `target`, each with an atomic rename, then remove
    `staging`. Used for folders that are rewritten while a run goes on (the best adapter)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(staging.iterdir()):
        os.replace(item, target / item.name)
    shutil.rmtree(staging, ignore_errors=True)


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh hidden folder inside `parent` whose contents are renamed into place when done."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent))


def new_run_dir_name(name: str, output_directory: Path, now: dt.datetime | None = None) -> Path:
    """`<output_directory>/<name>-<YYYYmmdd-HHMMSS>`, with -2, -3... when that name is taken."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = output_directory / f"{name}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = output_directory / f"{name}-{stamp}-{n}"
        n += 1
    return candidate


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that already holds something, unless asked to
    overwrite it (which empties it; a folder in use by a live run is never emptied)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: is a file, not a folder")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise UserError(
            f"--run-dir {run_dir}: the folder is not empty; continue that run with "
            f"`lora-recipes train --resume {run_dir}`, pass --overwrite to replace it, or choose another folder"
        )
    holder = lock_holder(run_dir)
    if holder is not None:
        raise UserError(f"{run_dir} is in use by a running `train` ({holder}); it cannot be overwritten")
    for item in run_dir.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def check_resumable(run_dir: Path) -> None:
    layout = RunLayout(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory")
    if not layout.resolved_recipe.is_file():
        raise UserError(f"--resume {run_dir}: not a run directory (it has no {layout.resolved_recipe.name})")
    if layout.cost_report_json.is_file():
        raise UserError(
            f"--resume {run_dir}: that run already finished (it has a {layout.cost_report_json.name}); start a new run"
        )


def resolved_recipe_text(loaded: LoadedRecipe) -> str:
    """The recipe with every default filled in, as a recipe file that `validate` accepts and that
    `train --resume` reads back. Local paths become absolute, since the file no longer sits
    beside the original recipe; the run's name is written out for the same reason."""
    import yaml

    resolved = dict(loaded.resolved)
    resolved["name"] = loaded.name
    base = loaded.recipe.base_model
    local_base = loaded.local_path(("base_model",), base)
    if not base.startswith(PACKAGE_PREFIX) and local_base.exists():
        resolved["base_model"] = str(local_base.resolve())
    dataset = loaded.recipe.data.dataset
    local_data = loaded.local_path(("data", "dataset"), dataset)
    if local_data.exists():
        resolved["data"] = {**resolved["data"], "dataset": str(local_data.resolve())}
    header = f"# Resolved from {loaded.path} by lora-recipes: every value, defaults included.\n"
    return header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)


def load_run_recipe(run_dir: Path) -> LoadedRecipe:
    """The recipe a run was started with (for --resume)."""
    check_resumable(run_dir)
    return load_recipe(RunLayout(run_dir).resolved_recipe)


# -- the lock ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host}"


def _read_lock(path: Path) -> LockInfo | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockInfo(int(data["pid"]), str(data["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_holder(run_dir: Path) -> LockInfo | None:
    """Who holds the run directory's lock, or None when nobody (or only a dead process) does.
    A lock written on another host is taken as held: we cannot see its processes."""
    info = _read_lock(RunLayout(run_dir).lock)
    if info is None:
        return None
    if info.host == socket.gethostname() and not _alive(info.pid):
        return None
    return info


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (`RunLayout.lock`: our PID and host) while the block runs. A
    second `train` into the same folder is refused; the lock of a process that died (kill -9) is
    taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunLayout(run_dir).lock
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(run_dir)
            if holder is not None:
                raise UserError(
                    f"{run_dir} is in use by another `train` ({holder}); wait for it to finish or stop it first"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"{run_dir}: could not take the lock {path}; another `train` is starting there")
    try:
        yield
    finally:
        if _read_lock(path) == LockInfo(me["pid"], me["host"]):  # type: ignore[arg-type]
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
