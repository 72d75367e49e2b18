"""The run directory's rules without a model: what --overwrite may empty (only a marked run
directory, only what a run writes), when a folder a failed start left is reused, the lock under
many simultaneous starts, and operating-system errors in words."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_recipes.errors import RuntimeFailure, UserError
from lora_recipes.training import run_dir as rundir
from lora_recipes.training.run_dir import RunLayout


def make_run(folder: Path, *, trained: bool = True) -> RunLayout:
    """A run directory as a run leaves it (`trained`: with a checkpoint, metrics and an adapter)."""
    layout = RunLayout(folder)
    folder.mkdir(parents=True)
    rundir.write_marker(folder)
    layout.resolved_recipe.write_text("name: x\n")
    layout.plan.write_text("{}")
    layout.manifest.write_text("{}")
    layout.metrics.write_text("")
    if trained:
        layout.metrics.write_text('{"event": "train", "step": 1, "loss": 1.0}\n')
        (layout.checkpoint(4)).mkdir(parents=True)
        (layout.checkpoint(4) / "state.json").write_text("{}")
        layout.adapter.mkdir()
        (layout.adapter / "adapter_model.safetensors").write_bytes(b"x")
        layout.cost_report_json.write_text("{}")
        (folder / ".plan.json.ab12cd34.tmp").write_text("half")  # a write a kill interrupted
    return layout


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- --overwrite ---------------------------------------------------------------------------------


def test_a_folder_without_the_marker_is_never_emptied(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "src").mkdir()
    (project / "notes.md").write_text("mine")
    (project / "recipe.resolved.yaml").write_text("looks like a run")
    before = tree(project)
    with pytest.raises(UserError) as refused:
        rundir.check_new_run_dir(project, overwrite=True)
    message = str(refused.value)
    assert "not a lora-recipes run directory" in message and ".lora-recipes-run" in message
    assert "nothing was removed" in message and "older lora-recipes" in message
    assert tree(project) == before
    with pytest.raises(UserError, match="not a lora-recipes run directory"):
        rundir.check_new_run_dir(project, overwrite=False)


def test_a_folder_of_runs_is_refused_with_the_way_to_name_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "a-20260101-000000")
    make_run(runs / "b-20260101-000000")
    before = tree(runs)
    with pytest.raises(UserError) as refused:
        rundir.check_new_run_dir(runs, overwrite=True)
    message = str(refused.value)
    assert "holds 2 run directories" in message and f"--run-dir {runs / 'a-20260101-000000'} --overwrite" in message
    assert tree(runs) == before


def test_overwrite_empties_only_what_a_run_writes(tmp_path: Path) -> None:
    layout = make_run(tmp_path / "run")
    (layout.root / "my-notes.txt").write_text("keep me")
    (layout.root / "extra").mkdir()
    (layout.root / "extra" / "data.csv").write_text("1,2")
    link_target = tmp_path / "outside"
    link_target.mkdir()
    (link_target / "precious").write_text("x")
    (layout.root / "tensorboard").symlink_to(link_target)  # a run's name, but a link: removed, not followed
    with pytest.raises(UserError, match="--overwrite"):
        rundir.check_new_run_dir(layout.root, overwrite=False)
    assert rundir.check_new_run_dir(layout.root, overwrite=True) is True
    assert layout.adapter.exists()  # the check removes nothing
    kept = rundir.empty_run_dir(layout.root)
    assert kept == ["extra", "my-notes.txt"]
    assert tree(layout.root) == {".lora-recipes-run", "extra", "extra/data.csv", "my-notes.txt"}
    assert (link_target / "precious").read_text() == "x"


def test_a_folder_a_failed_start_left_is_reused_without_overwrite(tmp_path: Path) -> None:
    layout = make_run(tmp_path / "run", trained=False)
    RunLayout(layout.root).lock.write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname()}))
    assert rundir.trained_nothing(layout)
    assert rundir.check_new_run_dir(layout.root, overwrite=False) is True
    layout.metrics.write_text('{"event": "train", "step": 1}\n')  # one step trained: a run
    assert not rundir.trained_nothing(layout)
    with pytest.raises(UserError, match="--resume"):
        rundir.check_new_run_dir(layout.root, overwrite=False)


def test_new_and_empty_folders_need_nothing_removed(tmp_path: Path) -> None:
    assert rundir.check_new_run_dir(tmp_path / "new", overwrite=False) is False
    (tmp_path / "empty").mkdir()
    assert rundir.check_new_run_dir(tmp_path / "empty", overwrite=True) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        rundir.check_new_run_dir(tmp_path / "file", overwrite=True)


def test_every_name_a_run_writes_is_known_to_overwrite() -> None:
    written = RunLayout(Path("/r")).written()
    assert {"adapter", "model", "checkpoints", "metrics.jsonl", "recipe.resolved.yaml", "cost_report.json"} <= written
    assert ".lock" not in written and ".lora-recipes-run" not in written


# -- the lock --------------------------------------------------------------------------------------

TRIALS = 120
RACERS = 6
# What a trial's folder holds before the racers start: nothing, the lock file of a process that
# died (kill -9), the empty file the old lock left between create and write, or garbage.
STARTS = ("none", "dead", "empty", "garbage")


def _prepare(folder: Path, start: str) -> None:
    folder.mkdir(parents=True)
    lock = RunLayout(folder).lock
    if start == "dead":
        lock.write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname()}))
    elif start == "empty":
        lock.write_text("")
    elif start == "garbage":
        lock.write_bytes(b"\x00not json")


def _racer(base: str, use_flock: bool, trials: int, start: Any, done: Any, results: Any) -> None:
    """One of RACERS processes: in every trial, all take the same folder's lock at once; the holder
    keeps it until every racer has tried."""
    from lora_recipes.errors import UserError
    from lora_recipes.training import run_dir as rundir

    rundir._USE_FLOCK = use_flock
    for trial in range(trials):
        start.wait()
        outcome = "refused"
        try:
            with rundir.run_lock(Path(base) / f"trial-{trial}"):
                outcome = "held"
                results.put((trial, outcome))
                done.wait()
        except UserError:
            results.put((trial, outcome))
            done.wait()


def race(base: Path, use_flock: bool, trials: int = TRIALS) -> dict[int, int]:
    """Holders per trial, racing RACERS spawned processes over `trials` folders."""
    for trial in range(trials):
        _prepare(base / f"trial-{trial}", STARTS[trial % len(STARTS)])
    context = multiprocessing.get_context("spawn")
    start, done, results = context.Barrier(RACERS), context.Barrier(RACERS), context.Queue()
    racers = [
        context.Process(target=_racer, args=(str(base), use_flock, trials, start, done, results)) for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    holders = dict.fromkeys(range(trials), 0)
    for _ in range(trials * RACERS):
        trial, outcome = results.get(timeout=120)
        holders[trial] += outcome == "held"
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    return holders


def test_many_simultaneous_starts_give_exactly_one_holder(tmp_path: Path) -> None:
    holders = race(tmp_path, use_flock=True)
    assert holders == dict.fromkeys(range(TRIALS), 1)
    assert not any(RunLayout(tmp_path / f"trial-{t}").lock.exists() for t in range(TRIALS))  # all let go


def test_without_flock_the_linked_lock_still_gives_one_holder(tmp_path: Path) -> None:
    holders = race(tmp_path, use_flock=False)
    assert holders == dict.fromkeys(range(TRIALS), 1)


@pytest.mark.parametrize("use_flock", [True, False])
def test_a_dead_holder_frees_the_lock_and_a_live_one_is_named(
    tmp_path: Path, use_flock: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rundir, "_USE_FLOCK", use_flock)
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom lora_recipes.training import run_dir\n"
        "run_dir._USE_FLOCK = sys.argv[2] == 'flock'\n"
        "with run_dir.run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    how = "flock" if use_flock else "link"
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), how], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        found = rundir.lock_holder(tmp_path)
        assert found is not None and found.pid == holder.pid
        with pytest.raises(UserError, match=f"process {holder.pid} on"), rundir.run_lock(tmp_path):
            pass
    finally:
        holder.kill()  # kill -9: no clean-up
        holder.wait()
    assert RunLayout(tmp_path).lock.exists()
    assert rundir.lock_holder(tmp_path) is None
    with rundir.run_lock(tmp_path):
        assert json.loads(RunLayout(tmp_path).lock.read_text())["pid"] == os.getpid()
    assert not RunLayout(tmp_path).lock.exists()


# -- operating-system errors ----------------------------------------------------------------------


def test_os_errors_are_named_with_their_path_and_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure) as full, rundir.os_errors("write", tmp_path / "x.json"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(full.value) == f"could not write {tmp_path / 'x.json'}: disk full (no space left on the device)"
    with pytest.raises(UserError, match="permission denied"), rundir.os_errors("read", tmp_path, error=UserError):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_json_with_nan_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="not finite"):
        rundir.write_json_strict(tmp_path / "a.json", {"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []
