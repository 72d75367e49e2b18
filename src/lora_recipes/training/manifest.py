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


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_state(folder: Path, recipe: Path | None = None) -> dict[str, Any] | None:
    """The commit checked out in the git work tree that holds `folder` (the recipe's folder) and
    whether tracked files differ from it; with `recipe`, also the recipe's path in the repository
    and its own state (unchanged, modified or untracked). None outside a git work tree (or
    without git)."""
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        status = _git(folder, "status", "--porcelain", "--untracked-files=no")
        state: dict[str, Any] = {"commit": commit, "dirty": bool(status)}
        if recipe is not None and recipe.is_file():
            name = recipe.name
            inside = _git(folder, "ls-files", "--full-name", "--", name)
            changed = _git(folder, "status", "--porcelain", "--", name)
            if inside:
                state["recipe"] = inside.splitlines()[0]
                state["recipe_state"] = "modified" if changed else "unchanged"
            else:
                prefix = _git(folder, "rev-parse", "--show-prefix")
                state["recipe"] = f"{prefix}{name}"
                state["recipe_state"] = "untracked"
    except (OSError, subprocess.SubprocessError):
        return None
    return state


@dataclass(frozen=True)
class Origin:
    """What a run was started from."""

    seed: int
    split_hashes: dict[str, str]  # content hash of every data split
    base_model: str  # as the recipe names it
    model_location: str  # where it was loaded from
    command_line: tuple[str, ...]
    recipe_path: Path | None = None  # the recipe file: its git repository is recorded (not the current directory's)
    # the base model's portable id, its hub revision and where it was loaded from (BaseIdentity.to_json)
    base_identity: dict[str, Any] | None = None
    # the data types used on the device (model.loading.Precision): weights, compute, autocast, notes
    precision: dict[str, Any] | None = None


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
        "base_model": {
            "recipe": origin.base_model,
            "loaded_from": origin.model_location,
            **(origin.base_identity or {}),
        },
        "libraries": library_versions(),
        "git": git_state(origin.recipe_path.resolve().parent, origin.recipe_path.resolve())
        if origin.recipe_path is not None
        else git_state(Path.cwd()),
        "host": {"name": socket.gethostname(), "platform": platform.platform(), "python": sys.executable},
        "device": {"type": device.type, "name": device.name, "processes": device.processes},
        "precision": origin.precision,
        "sessions": [],
    }
