"""manifest.json: what produced a run, so it can be reproduced and compared."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes import __version__

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "safetensors", "numpy")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "lora-recipes": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(folder: Path) -> dict[str, Any] | None:
    """The commit checked out in `folder` (the current directory) and whether files differ from
    it, or None outside a git work tree (or without git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


@dataclass(frozen=True)
class Origin:
    """What a run was started from."""

    seed: int
    split_hashes: dict[str, str]  # content hash of every data split
    base_model: str  # as the recipe names it
    model_location: str  # where it was loaded from
    command_line: tuple[str, ...]


@dataclass(frozen=True)
class Device:
    type: str  # cuda or cpu
    name: str  # e.g. NVIDIA H100 80GB HBM3, or the CPU's model name
    processes: int


def build_manifest(origin: Origin, device: Device) -> dict[str, Any]:
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command_line": list(origin.command_line),
        "seed": origin.seed,
        "data_hashes": origin.split_hashes,
        "base_model": {"recipe": origin.base_model, "loaded_from": origin.model_location},
        "libraries": library_versions(),
        "git": git_state(Path.cwd()),
        "host": {"name": socket.gethostname(), "platform": platform.platform(), "python": sys.executable},
        "device": {"type": device.type, "name": device.name, "processes": device.processes},
        "sessions": [],
    }
