"""`lora-recipes train` from the outside: the command line's refusals and last lines, kill -9
and Ctrl-C followed by --resume, and two processes training one recipe (data parallel, gloo)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_recipes.cli import app
from lora_recipes.training import run_dir as rundir
from lora_recipes.training.checkpoint import checkpoint_dir, latest_checkpoint
from lora_recipes.training.run_dir import RunLayout
from test_train_support import (
    RECIPE,
    adapter_tensors,
    assert_same_tensors,
    metrics,
    recipe_args,
    train_tiny,
    write_reviews,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reviews") / "reviews.jsonl")


runner = CliRunner()

# Long enough (150 quick steps) that a test can interrupt it after a checkpoint or two.
LONG = (
    "trainer.train_steps=150",
    "trainer.batch_size=2",
    "trainer.gradient_accumulation_steps=1",
    "trainer.eval_steps=50",
    "trainer.steps_per_checkpoint=5",
)


def cli_args(model_dir: Path, data: Path, run_dir: Path, *sets: str) -> list[str]:
    args = ["train", str(RECIPE), "--data", str(data), "--run-dir", str(run_dir)]
    for item in recipe_args(model_dir, *sets):
        args += ["--set", item]
    return args


def start(model_dir: Path, data: Path, run_dir: Path, *sets: str) -> subprocess.Popen[str]:
    # The same thread count as this process, whose in-process runs these are compared with: float
    # sums are split across threads, so another count gives other last bits.
    import torch

    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [sys.executable, "-m", "lora_recipes", *cli_args(model_dir, data, run_dir, *sets)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(process: subprocess.Popen[str], run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while not (checkpoint_dir(run_dir, step) / "state.json").is_file():
        if process.poll() is not None:
            pytest.fail(f"train ended before checkpoint {step}: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint {step} after 120 s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir: Path, reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LONG recipe trained without interruption."""
    return train_tiny(tiny_model_dir, reviews, tmp_path_factory.mktemp("straight") / "run", *LONG).run_dir


def test_kill_9_then_resume_finishes_with_the_uninterrupted_adapter(
    straight_run: Path, tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "killed"
    process = start(tiny_model_dir, reviews, run_dir, *LONG)
    wait_for_checkpoint(process, run_dir, 10)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    assert not (run_dir / "cost_report.json").exists()
    assert RunLayout(run_dir).lock.exists()  # left behind by the dead process...
    assert rundir.lock_holder(run_dir) is None  # ...and known to be stale

    result = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "resuming from checkpoints/step-" in result.output
    assert_same_tensors(adapter_tensors(run_dir / "adapter"), adapter_tensors(straight_run / "adapter"))
    assert [r["loss"] for r in metrics(run_dir)] == [r["loss"] for r in metrics(straight_run)]
    assert not RunLayout(run_dir).lock.exists()


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_same(
    straight_run: Path, tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "interrupted"
    process = start(tiny_model_dir, reviews, run_dir, *LONG)
    wait_for_checkpoint(process, run_dir, 5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; checkpoint written" in stderr and "Traceback" not in stderr
    last = latest_checkpoint(run_dir)
    assert last is not None
    steps_done = metrics(run_dir)[-1]["step"]
    assert last.name == f"step-{steps_done:08d}" and steps_done < 150  # checkpoint at the step it stopped
    assert not RunLayout(run_dir).lock.exists()

    result = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert_same_tensors(adapter_tensors(run_dir / "adapter"), adapter_tensors(straight_run / "adapter"))


def test_command_line_refusals_and_last_lines(tiny_model_dir: Path, reviews: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = cli_args(tiny_model_dir, reviews, run_dir, "trainer.train_steps=4")
    stopped = runner.invoke(app, [*args, "--stop-at-step", "2", "--set", "trainer.report_to=[tensorboard, wandb]"])
    assert stopped.exit_code == 0, stopped.output
    for sink in ("tensorboard", "wandb"):
        if importlib.util.find_spec(sink) is None:
            assert f"trainer.report_to: {sink} is not installed" in stopped.stderr
    assert stopped.stdout.splitlines()[-2:] == [
        f"run directory: {run_dir.resolve()}",
        f"stopped at step 2 of 4; continue with --resume {run_dir.resolve()}",
    ]

    again = runner.invoke(app, args)  # the folder is not empty
    assert again.exit_code == 2
    assert "--resume" in again.stderr and "--overwrite" in again.stderr and "Traceback" not in again.output

    mixed = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "seed=1"])
    assert mixed.exit_code == 2 and "leave out --set" in mixed.stderr
    nothing = runner.invoke(app, ["train"])
    assert nothing.exit_code == 2 and "--resume RUN_DIR" in nothing.stderr

    with rundir.run_lock(run_dir):  # a live `train` (this process) holds the folder
        locked = runner.invoke(app, ["train", "--resume", str(run_dir)])
        assert locked.exit_code == 2
        assert f"in use by another `train` (process {os.getpid()}" in locked.stderr
        overwrite = runner.invoke(app, [*args, "--overwrite"])
        assert overwrite.exit_code == 2 and "cannot be overwritten" in overwrite.stderr

    finished = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert finished.exit_code == 0, finished.output
    last_two = finished.stdout.splitlines()[-2:]
    assert last_two[0] == f"run directory: {run_dir.resolve()}"
    report = json.loads((run_dir / "cost_report.json").read_text())
    assert last_two[1].startswith("cost $") and f"{report['tokens_trained']:,} tokens" in last_two[1]

    done = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert done.exit_code == 2 and "already finished" in done.stderr
    validated = runner.invoke(app, ["validate", str(RunLayout(run_dir).resolved_recipe)])
    assert validated.exit_code == 0, validated.output


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    RunLayout(tmp_path).lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with rundir.run_lock(tmp_path):
        assert json.loads(RunLayout(tmp_path).lock.read_text())["pid"] == os.getpid()
    assert not RunLayout(tmp_path).lock.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_train_one_recipe_together(tiny_model_dir: Path, reviews: Path, tmp_path: Path) -> None:
    """accelerate launch, 2 CPU processes (gloo). Each process takes 2 micro-batches of every
    step, so the run must match one process taking all 4 (dropout off, so no RNG differs)."""
    sets = ("trainer.train_steps=4", "trainer.eval_steps=2", "adapter.dropout=0")
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port()), "-m", "lora_recipes"),
    ]
    done = subprocess.run(
        [*launch, *cli_args(tiny_model_dir, reviews, run_dir, *sets)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run directory:") == 1  # only the main process reports
    report = json.loads((run_dir / "cost_report.json").read_text())
    assert report["processes"] == 2
    assert report["gpu_hours"] == pytest.approx(report["wall_seconds"] * 2 / 3600)

    single = train_tiny(tiny_model_dir, reviews, tmp_path / "one", *sets, "trainer.gradient_accumulation_steps=4")
    two, one = metrics(run_dir), metrics(single.run_dir)
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]  # the same rows in every step
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["validation_loss"] for r in metrics(run_dir, "validation")] == pytest.approx(
        [r["validation_loss"] for r in metrics(single.run_dir, "validation")], rel=1e-4
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU path")
def test_a_7b_model_without_a_gpu_is_refused_before_anything_loads(reviews: Path, tmp_path: Path) -> None:
    args = ["train", str(RECIPE), "--data", str(reviews), "--run-dir", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--set", "base_model=mistralai/Mistral-7B-v0.1"])
    assert result.exit_code == 2
    assert "no CUDA GPU is visible" in result.stderr and "trainer.device: cpu" in result.stderr
    assert not (tmp_path / "run").exists()
