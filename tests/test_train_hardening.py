"""Training when things go wrong, on the tiny model: --overwrite that removes an earlier run only
once every input has loaded (and only what a run wrote), a failed start that leaves nothing in
the way, a loss that turns NaN, data changed under a resume without its manifest, every kind of
damaged checkpoint, and kill -9 in each phase of a run followed by --resume."""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lora_recipes.cli import app
from lora_recipes.errors import UserError
from lora_recipes.training import checkpoint, step
from lora_recipes.training.run_dir import RunLayout, load_run_recipe
from lora_recipes.training.train import TrainOptions, train
from test_train_checkpoint import DAMAGE, reseal
from test_train_cli import cli_args, start
from test_train_support import adapter_tensors, assert_same_tensors, metrics, train_tiny, write_reviews

pytestmark = pytest.mark.slow

runner = CliRunner()
SHORT = ("trainer.train_steps=2", "trainer.eval_steps=2", "trainer.steps_per_checkpoint=2")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reviews") / "reviews.jsonl")


@pytest.fixture(scope="module")
def bad_reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows without the recipe's columns: found only once the data is prepared, after the model loads."""
    path = tmp_path_factory.mktemp("bad") / "reviews.jsonl"
    path.write_text("".join(json.dumps({"review": f"text {i}"}) + "\n" for i in range(40)))
    return path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# -- --overwrite and failed starts -------------------------------------------------------------------


def test_overwrite_removes_an_earlier_run_only_after_the_inputs_load(
    tiny_model_dir: Path, reviews: Path, bad_reviews: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "runs" / "run"
    first = runner.invoke(app, cli_args(tiny_model_dir, reviews, run_dir, *SHORT))
    assert first.exit_code == 0, first.output
    (run_dir / "my-notes.txt").write_text("mine")
    before = snapshot(run_dir)

    bad = runner.invoke(app, [*cli_args(tiny_model_dir, bad_reviews, run_dir, *SHORT), "--overwrite"])
    assert bad.exit_code == 2, bad.output
    assert "Traceback" not in bad.output
    assert snapshot(run_dir) == before  # the model loaded, the data failed: the earlier run is whole

    for folder in (tmp_path / "runs", tmp_path / "project"):  # a folder of runs, a folder that is no run
        (tmp_path / "project" / ".git").mkdir(parents=True, exist_ok=True)
        (tmp_path / "project" / "notes.md").write_text("mine")
        kept = snapshot(folder)
        refused = runner.invoke(app, [*cli_args(tiny_model_dir, reviews, folder, *SHORT), "--overwrite"])
        assert refused.exit_code == 2 and "Traceback" not in refused.output
        assert "run director" in refused.stderr and snapshot(folder) == kept

    again = runner.invoke(app, [*cli_args(tiny_model_dir, reviews, run_dir, *SHORT, "seed=7"), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "kept what lora-recipes did not write there: my-notes.txt" in again.stderr
    assert (run_dir / "my-notes.txt").read_text() == "mine"
    assert len(json.loads((run_dir / "manifest.json").read_text())["sessions"]) == 1
    assert "seed: 7" in (run_dir / "recipe.resolved.yaml").read_text()


def test_a_failed_start_leaves_nothing_in_the_way(
    tiny_model_dir: Path, reviews: Path, bad_reviews: Path, tmp_path: Path
) -> None:
    new = tmp_path / "new"
    failed = runner.invoke(app, cli_args(tiny_model_dir, bad_reviews, new, *SHORT))
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    assert not new.exists()  # it made the folder, so it removed it

    given = tmp_path / "given"  # a folder the user made: kept, with what the start wrote
    given.mkdir()
    failed = runner.invoke(app, cli_args(tiny_model_dir, bad_reviews, given, *SHORT))
    assert failed.exit_code == 2
    assert sorted(os.listdir(given)) == [".lora-recipes-run", "recipe.resolved.yaml"]
    again = runner.invoke(app, cli_args(tiny_model_dir, reviews, given, *SHORT))  # no --overwrite needed
    assert again.exit_code == 0, again.output


# -- a loss that is not finite -------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = step.token_loss_sum
    calls = [0]

    def poisoned(model: torch.nn.Module, inputs: dict[str, Any], logits_mask: bool) -> torch.Tensor:
        summed = real(model, inputs, logits_mask)
        if torch.is_grad_enabled():  # training, not validation: 2 micro-batches a step
            calls[0] += 1
            if calls[0] > 8:  # from step 5 on
                return summed * float("nan")
        return summed

    monkeypatch.setattr(step, "token_loss_sum", poisoned)
    run_dir = tmp_path / "run"
    sets = ("trainer.train_steps=8", "trainer.eval_steps=2", "trainer.steps_per_checkpoint=2")
    result = runner.invoke(app, cli_args(tiny_model_dir, reviews, run_dir, *sets))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "step 5: the training loss is nan, not a finite number" in result.stderr
    assert "the last checkpoint (checkpoints/step-00000004) and the best adapter (step" in result.stderr

    records = [strict_json(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4]
    assert all(math.isfinite(r["validation_loss"]) for r in records if r["event"] == "validation")
    assert checkpoint.latest_checkpoint(run_dir) == checkpoint.checkpoint_dir(run_dir, 4)
    strict_json((run_dir / "adapter" / "adapter_config.json").read_text())
    assert all(bool(torch.isfinite(t).all()) for t in adapter_tensors(run_dir / "adapter").values())
    assert not (run_dir / "cost_report.json").exists() and not RunLayout(run_dir).lock.exists()


# -- resume ---------------------------------------------------------------------------------------------

STANDARD = ("trainer.checkpoints_to_keep=3",)  # 12 steps; validation and checkpoints every 4


@pytest.fixture(scope="module")
def straight(tiny_model_dir: Path, reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tiny_model_dir, reviews, tmp_path_factory.mktemp("straight") / "run", *STANDARD).run_dir


@pytest.fixture(scope="module")
def stopped_at_8(tiny_model_dir: Path, reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run stopped after step 8: checkpoints 4 and 8."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    train_tiny(tiny_model_dir, reviews, run_dir, *STANDARD, stop_at_step=8)
    return run_dir


def resume(run_dir: Path) -> tuple[Any, str]:
    out = io.StringIO()
    result = train(load_run_recipe(run_dir), TrainOptions(run_dir=run_dir, resume=True, stream=out))
    return result, out.getvalue()


def test_resume_refuses_changed_data_even_without_the_manifest(
    stopped_at_8: Path, reviews: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_at_8, run_dir)
    data = Path(load_run_recipe(run_dir).recipe.data.dataset)
    moved = tmp_path / "reviews.jsonl"
    recipe_text = RunLayout(run_dir).resolved_recipe.read_text().replace(str(data), str(moved))
    RunLayout(run_dir).resolved_recipe.write_text(recipe_text)  # this copy trains on its own data file
    write_reviews(moved, seed=1)  # other rows
    RunLayout(run_dir).manifest.unlink()
    before = snapshot(run_dir / "checkpoints")
    with pytest.raises(UserError, match=r"the data changed since the run started \(.*checkpoints/step-00000008"):
        resume(run_dir)
    assert snapshot(run_dir / "checkpoints") == before


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_skipped_and_the_run_finishes_the_same(
    straight: Path, stopped_at_8: Path, tmp_path: Path, kind: str
) -> None:
    damage, file, _, why = DAMAGE[kind]
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_at_8, run_dir)
    newest = checkpoint.checkpoint_dir(run_dir, 8)
    damage(newest / file)
    reseal(newest)  # so the checks past the hashes must find it
    result, said = resume(run_dir)
    assert f"checkpoint step-00000008 is damaged and was skipped ({file}: " in said and why in said
    assert "resuming from checkpoints/step-00000004 (step 4)" in said
    assert result.finished and result.step == 12
    assert_same_tensors(adapter_tensors(run_dir / "adapter"), adapter_tensors(straight / "adapter"))
    assert [r["loss"] for r in metrics(run_dir)] == [r["loss"] for r in metrics(straight)]


# -- kill -9 in every phase ---------------------------------------------------------------------------

# 30 steps of 2 rows; validation of 48 rows one at a time every 10 steps (long enough to be hit);
# checkpoints every 5 steps.
KILL = (
    "trainer.train_steps=30",
    "trainer.batch_size=2",
    "trainer.gradient_accumulation_steps=1",
    "trainer.eval_steps=10",
    "trainer.eval_batch_size=1",
    "trainer.steps_per_checkpoint=5",
    "trainer.checkpoints_to_keep=2",
    "data.split.validation_fraction=0.4",
)


@pytest.fixture(scope="module")
def kill_straight(tiny_model_dir: Path, reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tiny_model_dir, reviews, tmp_path_factory.mktemp("kill-straight") / "run", *KILL).run_dir


def records(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line being written
    return out


def trained(run_dir: Path, step_: int) -> bool:
    return any(r["event"] == "train" and r["step"] >= step_ for r in records(run_dir))


Trigger = tuple[str, Callable[[Path], bool], float, Callable[[Path], bool]]


def kill_point(phase: str, rng: random.Random) -> Trigger:
    """Where to kill in `phase`: (what, when it is time, a delay after that, whether the kill landed
    in the phase)."""
    if phase == "loading":
        return (
            "while loading",
            lambda d: RunLayout(d).resolved_recipe.is_file(),
            rng.uniform(0, 2.0),
            lambda d: not trained(d, 1),
        )
    if phase == "training":
        at = rng.randint(2, 28)
        return (f"after step {at}", lambda d: trained(d, at), rng.uniform(0, 0.05), lambda d: not trained(d, 30))
    if phase == "validation":
        at = rng.choice((10, 20))

        def validating(d: Path) -> bool:
            r = records(d)
            return bool(r) and r[-1] == {**r[-1], "event": "train", "step": at}

        def no_result(d: Path) -> bool:
            return not any(r["event"] == "validation" and r["step"] == at for r in records(d))

        return (f"in the validation of step {at}", validating, rng.uniform(0, 0.05), no_result)
    if phase == "checkpoint writing":
        at = rng.choice((5, 15, 25))
        partial = f".step-{at:08d}.partial"
        return (
            f"while writing checkpoint {at}",
            lambda d: (RunLayout(d).checkpoints / partial).is_dir(),
            0.0,
            lambda d: (RunLayout(d).checkpoints / partial).is_dir() and not checkpoint.checkpoint_dir(d, at).exists(),
        )
    assert phase == "final save"
    return (
        "after the last step",
        lambda d: trained(d, 30),
        rng.uniform(0, 0.5),
        lambda d: not RunLayout(d).cost_report_json.exists(),
    )


PHASES = ("loading", "training", "validation", "checkpoint writing", "final save")


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_in_each_phase_then_resume_gives_the_uninterrupted_adapter(
    kill_straight: Path, tiny_model_dir: Path, reviews: Path, tmp_path: Path, phase: str
) -> None:
    seed = int(os.environ.get("LORA_RECIPES_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(f"{seed}-{phase}")
    for attempt in range(1, 6):
        what, ready, delay, landed = kill_point(phase, rng)
        run_dir = tmp_path / f"attempt-{attempt}"
        process = start(tiny_model_dir, reviews, run_dir, *KILL)
        deadline = time.monotonic() + 300
        while not ready(run_dir):
            if process.poll() is not None:
                pytest.fail(f"train ended before the kill ({what}): {process.communicate()}")
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"never reached the kill point ({what})")
            if phase != "checkpoint writing":  # that window is a few milliseconds: no sleep
                time.sleep(0.002)
        time.sleep(delay)
        process.kill()  # SIGKILL
        process.communicate()
        if landed(run_dir):
            break
    else:
        pytest.fail(f"no kill landed in {phase} in 5 attempts")
    steps_done = max((r["step"] for r in records(run_dir) if r["event"] == "train"), default=0)

    resumed = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert_same_tensors(adapter_tensors(run_dir / "adapter"), adapter_tensors(kill_straight / "adapter"))
    assert [r["loss"] for r in metrics(run_dir)] == [r["loss"] for r in metrics(kill_straight)]
    print(
        f"\nkill -9 {phase}: {what} (seed {seed}, attempt {attempt}, {steps_done} steps recorded); "
        "--resume: adapter tensor-equal to the uninterrupted run's, same losses"
    )


# -- operating-system errors and Ctrl-C through the command line ------------------------------------


def limited_to(size: int) -> Callable[[], None]:
    """For subprocess: a file size limit (RLIMIT_FSIZE) in the child, writes past it failing with EFBIG."""

    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def run_limited(model_dir: Path, data: Path, run_dir: Path, size: int) -> subprocess.CompletedProcess[str]:
    sets = ("trainer.train_steps=4", "trainer.eval_steps=4", "trainer.steps_per_checkpoint=2")
    command = [sys.executable, "-m", "lora_recipes", *cli_args(model_dir, data, run_dir, *sets)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, preexec_fn=limited_to(size))


def test_a_run_file_that_cannot_be_written_is_named_not_a_traceback(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    # 1,500 bytes: the marker fits, the resolved recipe (2 KiB) does not.
    run_dir = tmp_path / "run"
    done = run_limited(tiny_model_dir, reviews, run_dir, 1_500)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: could not write {run_dir.resolve()}/recipe.resolved.yaml: file too large" in done.stderr
    assert not run_dir.exists()  # the start made the folder and removed it


def test_a_checkpoint_that_cannot_be_written_is_named_not_a_traceback(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    # 25,000 bytes: the run files and the data cache fit, the optimizer state (36 KB) does not.
    run_dir = tmp_path / "run"
    done = run_limited(tiny_model_dir, reviews, run_dir, 25_000)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    staging = run_dir.resolve() / "checkpoints" / ".step-00000002.partial"
    assert f"error: could not write {staging}/optimizer.pt: file too large" in done.stderr
    assert "there is no earlier one: --resume starts from the beginning" in done.stderr
    assert not staging.exists() and RunLayout(run_dir).marker.is_file()


def test_ctrl_c_while_loading_and_a_second_ctrl_c_name_the_run_to_resume(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    loading = tmp_path / "loading"
    process = start(tiny_model_dir, reviews, loading, *KILL)
    while not RunLayout(loading).resolved_recipe.is_file():
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"continue with --resume {loading.resolve()})" in stderr
    assert "RUN_DIR" not in stderr and "Traceback" not in stderr

    twice = tmp_path / "twice"
    process = start(tiny_model_dir, reviews, twice, *KILL)
    while not trained(twice, 3):
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"--resume {twice.resolve()}" in stderr
    assert "RUN_DIR" not in stderr and "Traceback" not in stderr
