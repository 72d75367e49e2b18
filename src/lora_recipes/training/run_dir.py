"""Run directories: the name of every file in one (`RunLayout`), naming new ones, the
never-overwrite rules, the lock that keeps one `train` per directory, and atomic writes.

Nothing heavy is imported here: the CLI checks a run directory before torch is loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.atomic import (  # noqa: F401  (re-exported: run files are written through these)
    atomic_open,
    replace_files_from,
    staging_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from lora_recipes.errors import LoraRecipesError, RuntimeFailure, UserError
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

    @property
    def wandb(self) -> Path:
        """Weights & Biases' local files, when the recipe reports to W&B."""
        return self.root / "wandb"

    @property
    def tracking(self) -> Path:
        """The ids of the run's W&B and MLflow runs (training.tracking), so --resume continues them."""
        return self.root / "tracking.json"


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

    @property
    def scaler(self) -> Path:
        """fp16 loss scaling's state (only for runs that scale the loss)."""
        return self.folder / "scaler.pt"

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
    return name in layout.written() or _in_progress(layout, name)


def _in_progress(layout: RunLayout, name: str) -> bool:
    """Files being written, and the lock's own (`.lock.*`, see `_take_link_lock`)."""
    return bool(_IN_PROGRESS.match(name)) or name.startswith(layout.lock.name + ".")


def tracker_files(layout: RunLayout) -> tuple[Path, ...]:
    """What experiment trackers write when a run starts (before its first step)."""
    return (layout.tensorboard, layout.wandb, layout.tracking)


def trained_nothing(layout: RunLayout) -> bool:
    """Whether a run directory holds only what a start that failed (or was killed) before its
    first optimizer step writes: the marker, the lock, the resolved recipe, the plan, the
    manifest, an empty metrics.jsonl, the trackers' first files, files being written."""
    files = (layout.resolved_recipe, layout.plan, layout.manifest, layout.metrics, *tracker_files(layout))
    allowed = {p.name for p in (*files, layout.marker, layout.lock)}
    for entry in layout.root.iterdir():
        if entry.name not in allowed and not _in_progress(layout, entry.name):
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


# -- writing run files -------------------------------------------------------------------------

# What an operating-system error means, in the words a message needs.
_REASONS = {
    errno.ENOSPC: "disk full (no space left on the device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (over the file size limit; see `ulimit -f`)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error (a failing disk or a lost network mount?)",
}


def describe_os_error(exc: OSError, doing: str, path: Path | str | None = None) -> str:
    """`could not write PATH: disk full (...)`: the path (`path`, else the error's own) and the
    reason in words."""
    where = path if path is not None else exc.filename
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return f"could not {doing} {where}: {reason}" if where else f"could not {doing}: {reason}"


@contextlib.contextmanager
def os_errors(
    doing: str, path: Path | None = None, *, error: type[LoraRecipesError] = RuntimeFailure
) -> Iterator[None]:
    """Turn an `OSError` in the block into `error` (a `RuntimeFailure` unless told) that names
    `path` (else the error's file) and the reason: disk full, permission denied..."""
    try:
        yield
    except OSError as exc:
        raise error(describe_os_error(exc, doing, path)) from exc


def write_json_strict(path: Path, value: Any) -> None:
    """Write JSON atomically, refusing NaN and infinity (which are not JSON) and naming the
    path on an operating-system error."""
    try:
        text = json.dumps(value, indent=2, default=str, allow_nan=False) + "\n"
    except ValueError as exc:
        raise RuntimeFailure(
            f"{path}: refusing to write a number that is not finite (NaN or infinity) as JSON"
        ) from exc
    with os_errors("write", path):
        write_text_atomic(path, text)


# -- the lock ---------------------------------------------------------------------------------

LOCK_PATIENCE_SECONDS = 2.0  # how long to wait for a lock's holder to write its name into it
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
_USE_FLOCK = True  # tests switch this off to test the fallback for file systems without flock


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host}" if self.pid else "another process"


UNKNOWN_HOLDER = LockInfo(0, "")  # held, but the holder has not written its name yet


def _parse_lock(data: bytes) -> LockInfo | None:
    try:
        record = json.loads(data.decode("utf-8"))
        return LockInfo(int(record["pid"]), str(record["host"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _read_lock(path: Path) -> LockInfo | None:
    try:
        return _parse_lock(path.read_bytes())
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _live(info: LockInfo | None) -> bool:
    """Whether the process a lock file names may still run (on another host: we cannot tell, so yes)."""
    return info is not None and (info.host != socket.gethostname() or _alive(info.pid))


def lock_holder(run_dir: Path) -> LockInfo | None:
    """Who holds the run directory's lock, or None when nobody does. The lock is an flock on
    `RunLayout.lock`, so a process that died (kill -9) holds nothing, whatever the file says;
    where the file system has no flock, the file's PID is checked (another host's is taken as
    held: we cannot see its processes)."""
    path = RunLayout(run_dir).lock
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        info = _read_lock(path)
        return info if _live(info) else None
    try:
        if not _USE_FLOCK:
            raise OSError(errno.ENOLCK, "flock switched off")
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_lock(path) or UNKNOWN_HOLDER
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        info = _read_lock(path)
        return info if _live(info) else None
    finally:
        os.close(fd)  # and with it the shared lock taken to look


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock while the block runs: a second `train` into the same folder
    is refused, and the lock of a process that died (kill -9) is free at once.

    The lock is an exclusive `flock` on `RunLayout.lock`, which the kernel drops when its
    process ends however it ends, so there is no stale lock to take over and no race in taking
    one; the file then gets our PID and host, for the message a second `train` prints. On file
    systems without flock (`_take_link_lock`) the file itself is the lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunLayout(run_dir).lock
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": secrets.token_hex(8)}).encode()
    release = _take_flock(path, me, run_dir) if _flock_works(run_dir) else _take_link_lock(path, me, run_dir)
    try:
        yield
    finally:
        release()


def _flock_works(run_dir: Path) -> bool:
    """Whether the file system of `run_dir` has flock (tried on a file of its own, so that the
    lock file is never created where the other way of locking is used)."""
    if not _USE_FLOCK:
        return False
    probe = RunLayout(run_dir).lock.with_name(f"{RunLayout(run_dir).lock.name}.{os.getpid()}.probe")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return False
        raise
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()


def _in_use(run_dir: Path, holder: LockInfo) -> UserError:
    return UserError(f"{run_dir} is in use by another `train` ({holder}); wait for it to finish or stop it first")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _take_flock(path: Path, me: bytes, run_dir: Path) -> Callable[[], None]:
    deadline = time.monotonic() + LOCK_PATIENCE_SECONDS
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_lock(path)
            # Held. Say by whom; a holder that has not written its name yet (or that only looked,
            # see lock_holder) gets a moment.
            if holder is not None and _live(holder):
                raise _in_use(run_dir, holder) from None
            if time.monotonic() > deadline:
                raise _in_use(run_dir, UNKNOWN_HOLDER) from None
            time.sleep(0.02)
            continue
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                return _take_link_lock(path, me, run_dir)
            raise
        if not _same_file(fd, path):  # its holder removed it as we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        os.fsync(fd)
        return lambda: _release_flock(fd, path)


def _release_flock(fd: int, path: Path) -> None:
    """Remove the lock file while still holding it (a process that opened it meanwhile sees that
    it is gone, see `_take_flock`), then let go."""
    try:
        if _same_file(fd, path):
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


def _take_link_lock(path: Path, me: bytes, run_dir: Path) -> Callable[[], None]:
    """The lock on a file system without flock: the lock file is written whole under another
    name and hard-linked to `path` (which fails when `path` exists), so it never appears empty.
    A dead process's lock is removed only by the process that holds `.lock.takeover` (taken the
    same way), and only if it still holds what was judged dead: no other process can change it
    meanwhile (a new lock cannot appear while it exists, its dead owner cannot let it go), so two
    processes never both take over. (A takeover file left by a process killed in the microseconds
    it holds one is cleared after `STALE_TAKEOVER_SECONDS`.)"""
    taking = path.with_name(f"{path.name}.{os.getpid()}.taking")
    takeover = path.with_name(f"{path.name}.takeover")
    fd = os.open(taking, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, me)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        deadline = time.monotonic() + LOCK_PATIENCE_SECONDS
        while time.monotonic() < deadline:
            try:
                os.link(taking, path)
                return lambda: _release_link_lock(path, me)
            except FileExistsError:
                pass
            try:
                seen = path.read_bytes()
            except FileNotFoundError:
                continue
            holder = _parse_lock(seen)
            if holder is not None and _live(holder):
                raise _in_use(run_dir, holder)
            try:
                os.link(taking, takeover)
            except FileExistsError:
                _clear_stale_takeover(takeover)
                time.sleep(0.005)
                continue
            try:
                with contextlib.suppress(FileNotFoundError):
                    if path.read_bytes() == seen:  # still the dead one: nobody else can change it now
                        path.unlink()
            finally:
                takeover.unlink()
        raise UserError(f"{run_dir}: could not take the lock {path}; another `train` is starting there")
    finally:
        with contextlib.suppress(OSError):
            taking.unlink()


STALE_TAKEOVER_SECONDS = 10.0


def _clear_stale_takeover(takeover: Path) -> None:
    """Remove a takeover file whose process died while holding it (it is held for microseconds)."""
    try:
        seen = takeover.read_bytes()
        old = time.time() - takeover.stat().st_mtime > STALE_TAKEOVER_SECONDS
    except FileNotFoundError:
        return
    if not old or _live(_parse_lock(seen)):
        return
    aside = takeover.with_name(f"{takeover.name}.{os.getpid()}.stale")
    try:
        os.rename(takeover, aside)
    except FileNotFoundError:
        return
    if aside.read_bytes() != seen:  # not the one judged dead: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, takeover)
    aside.unlink()


def _release_link_lock(path: Path, me: bytes) -> None:
    with contextlib.suppress(OSError):
        if path.read_bytes() == me:
            path.unlink()
