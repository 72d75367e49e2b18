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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lora_recipes.atomic import (  # noqa: F401  (re-exported: run files are written through these)
    atomic_open,
    replace_files_from,
    staging_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
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
        """Held by the `train` writing the run (an flock; the file names its PID and host)."""
        return self.root / ".lock"

    @property
    def marker(self) -> Path:
        """Written first into every run directory: what makes a folder one that --overwrite may
        empty (`check_new_run_dir`)."""
        return self.root / ".lora-recipes-run"

    def written(self) -> frozenset[str]:
        """The names of what a run writes at the top of its directory, the marker and the lock
        left out: every `Path` property of this class that lies directly in `root` (so a file
        added here is known to --overwrite at once). Nothing else in a run directory is ever
        removed by lora-recipes."""
        names = set()
        for attribute, value in vars(RunLayout).items():
            if isinstance(value, property) and attribute not in ("lock", "marker"):
                path = getattr(self, attribute)
                if isinstance(path, Path) and path.parent == self.root:
                    names.add(path.name)
        return frozenset(names)

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
        """The training state (steps, best loss, counters, the data's hashes)."""
        return self.folder / "state.json"

    @property
    def complete(self) -> Path:
        """Written last: the size and SHA-256 of every other file, checked before a resume uses
        the checkpoint (`checkpoint.verify_checkpoint`)."""
        return self.folder / "complete.json"

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


def new_run_dir_name(name: str, output_directory: Path, now: dt.datetime | None = None) -> Path:
    """`<output_directory>/<name>-<YYYYmmdd-HHMMSS>`, with -2, -3... when that name is taken."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = output_directory / f"{name}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = output_directory / f"{name}-{stamp}-{n}"
        n += 1
    return candidate


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> bool:
    """Whether a new run may start in `run_dir`, and whether the folder must first be emptied of
    what an earlier run wrote. Nothing is removed here: `empty_run_dir` does that once every input
    (recipe, model, data) has been checked, so a start that fails leaves the old run as it was.

    A new or empty folder is fine. A run directory (it carries `RunLayout.marker`) that holds only
    what a start that trained nothing wrote is reused as is. Any other run directory needs
    --overwrite, and a folder without the marker is never emptied: it may be a project, a folder
    of runs, or a run made before the marker existed."""
    with os_errors("read", run_dir, error=UserError):
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir}: is a file, not a folder")
        if not run_dir.is_dir() or not any(run_dir.iterdir()):
            return False
        layout = RunLayout(run_dir)
        if not layout.marker.is_file():
            raise UserError(_not_a_run_dir(run_dir, overwrite))
        if trained_nothing(layout):
            return True
    if not overwrite:
        raise UserError(
            f"--run-dir {run_dir}: the folder holds a run; continue it with "
            f"`lora-recipes train --resume {run_dir}`, pass --overwrite to replace it, or choose another folder"
        )
    holder = lock_holder(run_dir)
    if holder is not None:
        raise UserError(f"{run_dir} is in use by a running `train` ({holder}); it cannot be overwritten")
    return True


def _not_a_run_dir(run_dir: Path, overwrite: bool) -> str:
    """Why a non-empty folder without the marker is refused, and what to do instead."""
    runs = sorted(child.name for child in run_dir.iterdir() if RunLayout(child).marker.is_file())
    if runs:
        shown = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
        return (
            f"--run-dir {run_dir}: the folder holds {len(runs)} run director{'ies' if len(runs) > 1 else 'y'} "
            f"({shown}); a run needs a folder of its own. Give a new folder, or one run's folder "
            f"(--run-dir {run_dir / runs[0]}{' --overwrite' if overwrite else ''})"
        )
    older = " (it looks like a run from an older lora-recipes)" if RunLayout(run_dir).resolved_recipe.is_file() else ""
    if overwrite:
        return (
            f"--run-dir {run_dir}: the folder is not empty and is not a lora-recipes run directory{older}: it has "
            f"no {RunLayout(run_dir).marker.name} marker. --overwrite only empties run directories lora-recipes "
            "made, so nothing was removed. Choose another folder, or empty this one yourself"
        )
    return (
        f"--run-dir {run_dir}: the folder is not empty and is not a lora-recipes run directory{older}; "
        "choose a new or empty folder"
    )


# What a run leaves while it writes: atomic writes' temporary files and staging folders
# (`.NAME.XXXXXXXX.tmp`, `.NAME.XXXXXXXX.partial`, see lora_recipes.atomic).
_IN_PROGRESS = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|partial)$")


def _ours(layout: RunLayout, name: str) -> bool:
    return name in layout.written() or bool(_IN_PROGRESS.match(name))


def trained_nothing(layout: RunLayout) -> bool:
    """Whether a run directory holds only what a start that failed (or was killed) before its
    first optimizer step writes: the marker, the lock, the resolved recipe, the plan, the
    manifest, an empty metrics.jsonl, TensorBoard's first file, files being written."""
    allowed = {layout.resolved_recipe, layout.plan, layout.manifest, layout.metrics, layout.tensorboard}
    allowed = {p.name for p in allowed} | {layout.marker.name, layout.lock.name}
    for entry in layout.root.iterdir():
        if entry.name not in allowed and not _IN_PROGRESS.match(entry.name):
            return False
    metrics = layout.metrics
    return not metrics.is_file() or not metrics.read_bytes().strip()


def empty_run_dir(run_dir: Path) -> list[str]:
    """Remove what a run writes (`RunLayout.written`, and files being written) from a run
    directory; the marker, the lock and anything else stay. Returns the names of what was kept
    that lora-recipes did not write (for a message). Symbolic links are removed, never followed."""
    layout = RunLayout(run_dir)
    kept = []
    for entry in sorted(run_dir.iterdir()):
        if entry.name in (layout.marker.name, layout.lock.name):
            continue
        if not _ours(layout, entry.name):
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return kept


def write_marker(run_dir: Path) -> None:
    """Mark `run_dir` as a lora-recipes run directory (the first file of every run)."""
    from lora_recipes import __version__

    layout = RunLayout(run_dir)
    if not layout.marker.is_file():
        write_json_strict(layout.marker, {"lora_recipes": __version__, "what": "a lora-recipes training run"})


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
