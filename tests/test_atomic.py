"""Atomic writes: whole files or none, with the modes the umask allows (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_recipes.atomic import (
    atomic_open,
    current_umask,
    dir_mode,
    file_mode,
    replace_files_from,
    staging_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask
    assert file_mode() == 0o666 & ~umask and dir_mode() == 0o777 & ~umask


def test_files_get_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for i, write in enumerate(
        (
            lambda p: write_text_atomic(p, "text"),
            lambda p: write_bytes_atomic(p, b"bytes"),
            lambda p: write_json_atomic(p, {"a": 1}),
        )
    ):
        path = tmp_path / "sub" / f"file-{i}"
        write(path)
        assert mode(path) == mode(plain) == 0o666 & ~umask
        assert mode(path.parent) == 0o777 & ~umask
    with atomic_open(tmp_path / "opened.bin", "wb") as f:
        f.write(b"1")
    assert mode(tmp_path / "opened.bin") == 0o666 & ~umask


def test_replacing_a_file_gives_it_the_umask_mode(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "f.json"
    path.write_text("{}")
    path.chmod(0o600)
    write_json_atomic(path, [1])
    assert mode(path) == 0o666 & ~umask
    assert path.read_text() == "[\n  1\n]\n"


def test_staging_folders_get_the_mode_mkdir_would_give(tmp_path: Path, umask: int) -> None:
    folder = staging_dir(tmp_path / "parent", "adapter")
    assert folder.parent == tmp_path / "parent" and folder.name.startswith(".adapter.")
    assert mode(folder) == 0o777 & ~umask
    (folder / "weights").write_bytes(b"w")
    target = tmp_path / "parent" / "adapter"
    os.replace(folder, target)  # renamed into place, it keeps its mode
    assert mode(target) == 0o777 & ~umask


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_an_error_before_the_first_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt), atomic_open(path):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_replace_files_from_moves_each_file_and_removes_staging(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "adapter_config.json").write_text("old")
    (target / "kept.txt").write_text("kept")
    staging = staging_dir(tmp_path, "adapter")
    (staging / "adapter_config.json").write_text("new")
    (staging / "adapter_model.safetensors").write_bytes(b"w")
    replace_files_from(staging, target)
    assert not staging.exists()
    assert (target / "adapter_config.json").read_text() == "new"
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "kept.txt"]


def test_files_a_library_wrote_0600_into_staging_are_widened(tmp_path: Path, umask: int) -> None:
    """safetensors writes its files 0600: what is moved into place gets the umask's mode."""
    staging = staging_dir(tmp_path, "adapter")
    (staging / "weights.safetensors").write_bytes(b"w")
    (staging / "weights.safetensors").chmod(0o600)
    (staging / "sub").mkdir()
    (staging / "sub").chmod(0o700)
    (staging / "sub" / "x").write_text("x")
    (staging / "sub" / "x").chmod(0o600)
    replace_files_from(staging, tmp_path / "adapter")
    assert mode(tmp_path / "adapter" / "weights.safetensors") == 0o666 & ~umask
    assert mode(tmp_path / "adapter" / "sub") == 0o777 & ~umask
    assert mode(tmp_path / "adapter" / "sub" / "x") == 0o666 & ~umask
