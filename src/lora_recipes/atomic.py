"""Atomic writes whose results others can read: files and folders appear whole or not at all, with
the mode an ordinary `open()` or `mkdir()` would give them.

`tempfile.mkstemp` and `mkdtemp` create 0600 files and 0700 folders whatever the umask says, so a
file renamed into place from one stays unreadable to a server or a teammate running as another
user. Everything here widens the temporary file or folder to what the umask allows (0666 & ~umask
for files, 0777 & ~umask for folders) before it is renamed into place: with the usual umask 022
that is 0644 and 0755, with 077 still 0600 and 0700.

Nothing heavy is imported: the CLI checks and writes run directories before torch is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o666
DIR_MODE = 0o777


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux's
    /proc/self/status); elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from `open()`: 0666 less the umask."""
    return FILE_MODE & ~current_umask()


def dir_mode() -> int:
    """The mode a new folder gets from `mkdir()`: 0777 less the umask."""
    return DIR_MODE & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file to write `path` through: a temporary file in the same folder that, when the block
    ends without error, is flushed to disk, given the umask's mode and renamed over `path`, so a
    reader (or a run killed half-way) sees the old file or the new one, never a torn one. On error
    it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
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


def widen_to_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the mode the umask allows: for what
    libraries wrote into a staging folder (safetensors, for one, writes its files 0600).
    Symbolic links are left alone."""
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, file_mode())
        return
    os.chmod(path, dir_mode())
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), dir_mode())
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), file_mode())


def replace_files_from(staging: Path, target: Path) -> None:
    """Move every file of `staging` into `target`, each with an atomic rename and the umask's
    mode, then remove `staging`. Used for folders that are rewritten while a run goes on (the best
    adapter)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(staging.iterdir()):
        widen_to_umask(item)
        os.replace(item, target / item.name)
    shutil.rmtree(staging, ignore_errors=True)


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh hidden folder inside `parent` whose contents are renamed into place when done; it
    has the umask's mode, so it can itself be renamed into place as a finished folder (call
    `widen_to_umask` on it first when a library wrote files into it)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent))
    os.chmod(folder, dir_mode())
    return folder
