"""manifest.json: what produced a run, so it can be reproduced and compared."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import socket
import subprocess
import sys
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


def build_manifest(
    *,
    seed: int,
    split_hashes: dict[str, str],
    device: str,
    device_name: str,
    processes: int,
    base_model: str,
    model_location: str,
    command_line: list[str],
) -> dict[str, Any]:
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command_line": command_line,
        "seed": seed,
        "data_hashes": split_hashes,
        "base_model": {"recipe": base_model, "loaded_from": model_location},
        "libraries": library_versions(),
        "git": git_state(Path.cwd()),
        "host": {"name": socket.gethostname(), "platform": platform.platform(), "python": sys.executable},
        "device": {"type": device, "name": device_name, "processes": processes},
        "sessions": [],
    }
