"""Fleets: the fleet plan, the data each recipe gets, the job's decisions, fleet.json and `fleet
status`, the leaderboard (markdown, JSON, PNG, a self-contained HTML page) and the serving
commands, without a model; then (slow) real fleets of tiny recipes on the local backend and on a
real local Ray instance: one recipe with bad data, a worker's child killed with -9, the driver
stopped with SIGTERM, and a rerun that finishes with adapters tensor-equal to the same recipes
trained alone."""

from __future__ import annotations

import html.parser
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from lora_recipes.cli import app
from lora_recipes.errors import UserError
from lora_recipes.fleet import job as fleet_job
from lora_recipes.fleet import runstate
from lora_recipes.fleet.datamap import choose_data, root_candidates
from lora_recipes.fleet.leaderboard import MISSING, collect, render_markdown, write_leaderboard
from lora_recipes.fleet.local_backend import LocalBackend
from lora_recipes.fleet.recipes import DataOptions, load_fleet
from lora_recipes.fleet.state import FleetState, RecipeRecord, fleet_lock
from lora_recipes.recipe.serving import vllm_rank_flag
from lora_recipes.training.run_dir import lock_holder
from test_imports import loaded_heavy_modules
from test_train_support import RECIPE, adapter_tensors, assert_same_tensors, write_reviews

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
INVALID = ROOT / "tests" / "fixtures" / "invalid"
runner = CliRunner()


# -- the fleet plan ------------------------------------------------------------------------------


def test_fleet_plan_lists_an_invalid_recipe_and_plans_the_rest() -> None:
    files = [RECIPES / "glue_sst2.yaml", INVALID / "bad_enum.yaml", RECIPES / "viggo.yaml"]
    result = runner.invoke(app, ["plan", *map(str, files), "--no-data"])
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["recipe", "rows", "steps", "GPU-hours", "cost", "peak", "memory", "fits"]
    sst2 = next(line for line in lines if line.startswith("glue_sst2 "))
    assert "67,349" in sst2 and "yes (A10G)" in sst2
    assert any(line.startswith("bad_enum ") and "invalid" in line for line in lines)
    assert "3 recipes: 2 planned, 1 invalid" in result.stdout
    assert "median $" in result.stdout and "under $8" in result.stdout
    assert f"{INVALID / 'bad_enum.yaml'}: invalid" in result.stdout

    as_json = runner.invoke(app, ["plan", *map(str, files), "--no-data", "--format", "json"])
    assert as_json.exit_code == 2
    fleet = json.loads(as_json.stdout)
    rows = {r["name"]: r for r in fleet["recipes"]}
    assert rows["bad_enum"]["valid"] is False and rows["bad_enum"]["errors"]
    assert rows["viggo"]["plan"]["steps"]["total"] == rows["viggo"]["steps"]
    totals = fleet["totals"]
    assert totals["planned"] == 2 and totals["invalid"] == 1
    assert totals["cost_usd"] == pytest.approx(rows["glue_sst2"]["cost_usd"] + rows["viggo"]["cost_usd"])

    single = runner.invoke(app, ["plan", str(RECIPES / "glue_sst2.yaml"), "--no-data"])
    assert single.exit_code == 0 and single.stdout.startswith("# plan for glue_sst2")  # one recipe: as before


def test_fleet_plan_without_data_imports_nothing_heavy() -> None:
    files = [str(RECIPES / f"{name}.yaml") for name in ("jigsaw", "glue_sst2", "e2e_nlg")]
    assert loaded_heavy_modules("plan", *files, "--no-data", "--format", "json") == []


def test_fleet_plan_refuses_one_data_path_for_several_recipes() -> None:
    files = [str(RECIPES / "glue_sst2.yaml"), str(RECIPES / "viggo.yaml")]
    result = runner.invoke(app, ["plan", *files, "--data", "x"])
    assert result.exit_code == 2 and "--data-root" in result.stderr


# -- which data each recipe gets -----------------------------------------------------------------


def test_data_root_finds_shared_folders_by_name_config_dataset_or_first_word(tmp_path: Path) -> None:
    for folder in ("sst2", "viggo", "arc", "e2e_nlg"):
        (tmp_path / folder).mkdir()
    assert root_candidates("glue_sst2", "nyu-mll/glue", "sst2") == ["glue_sst2", "sst2", "glue"]

    def chosen(name: str, dataset: str, config: str | None) -> str | None:
        return choose_data(name, dataset, config, explicit={}, data_map={}, data_root=tmp_path).path

    assert chosen("glue_sst2", "nyu-mll/glue", "sst2") == str(tmp_path / "sst2")
    assert chosen("viggo", "GEM/viggo", None) == str(tmp_path / "viggo")
    assert chosen("arc_combined", "./data/arc_combined", None) == str(tmp_path / "arc")
    assert chosen("e2e_nlg", "e2e_nlg", None) == str(tmp_path / "e2e_nlg")
    assert chosen("jigsaw", "./data/jigsaw", None) is None  # not there: the recipe's own data

    explicit = choose_data(
        "viggo", "GEM/viggo", None, explicit={"viggo": "/x"}, data_map={"viggo": "/y"}, data_root=tmp_path
    )
    assert explicit.path == "/x"
    mapped = choose_data("viggo", "GEM/viggo", None, explicit={}, data_map={"viggo": "/y"}, data_root=tmp_path)
    assert mapped.path == "/y"


def test_data_map_file_and_data_items(tmp_path: Path) -> None:
    (tmp_path / "map.yaml").write_text("glue_sst2: ./sst2-copy\n")
    (tmp_path / "sst2-copy").mkdir()
    (tmp_path / "viggo-copy").mkdir()
    options = DataOptions(items=(f"viggo={tmp_path / 'viggo-copy'}",), data_map=tmp_path / "map.yaml")
    recipes = load_fleet([RECIPES / "glue_sst2.yaml", RECIPES / "viggo.yaml"], [], options)
    assert [r.data.path for r in recipes] == [str(tmp_path / "sst2-copy"), str(tmp_path / "viggo-copy")]
    assert all(r.valid for r in recipes)
    with pytest.raises(UserError, match="no recipe of the fleet is named 'vigo'"):
        load_fleet([RECIPES / "viggo.yaml"], [], DataOptions(items=("vigo=/x",)))
    with pytest.raises(UserError, match="NAME=PATH"):
        load_fleet([RECIPES / "viggo.yaml"], [], DataOptions(items=("/x",)))
    with pytest.raises(UserError, match="both named 'viggo'"):
        load_fleet([RECIPES / "viggo.yaml", RECIPES / "viggo.yaml"], [], DataOptions())


# -- the job's decisions, from the run directory alone -------------------------------------------


def test_the_run_directory_says_what_is_left(tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert runstate.phase(run, base=False) == runstate.NEW
    run.mkdir()
    (run / "recipe.resolved.yaml").write_text("name: r\n")
    assert runstate.phase(run, base=False) == runstate.PART_TRAINED
    (run / "cost_report.json").write_text("{}")
    assert runstate.phase(run, base=False) == runstate.TRAINED
    (run / "eval").mkdir()
    scores: dict[str, Any] = {"adapter": {"accuracy": 0.5}}
    (run / "eval" / "eval.json").write_text(json.dumps({"metric": "accuracy", "scores": scores}))
    assert runstate.phase(run, base=False) == runstate.DONE
    assert runstate.phase(run, base=True) == runstate.TRAINED  # --base added: evaluate again (resumes)

    spec = fleet_job.JobSpec("r", "/recipes/r.yaml", str(tmp_path), ("seed=1",), "/data/r", base=True)
    assert fleet_job.train_args(spec, runstate.NEW) == [
        *("train", "/recipes/r.yaml", "--run-dir", str(run), "--data", "/data/r", "--set", "seed=1"),
    ]
    assert fleet_job.train_args(spec, runstate.PART_TRAINED) == ["train", "--resume", str(run)]
    assert fleet_job.evaluate_args(spec) == [
        *(
            "evaluate",
            str(run / "recipe.resolved.yaml"),
            "--adapter",
            str(run),
            "--output",
            str(run / "eval"),
            "--base",
        ),
    ]


def test_a_finished_run_is_skipped_and_a_folder_of_other_files_is_left_alone(tmp_path: Path) -> None:
    done = tmp_path / "done"
    (done / "eval").mkdir(parents=True)
    (done / "recipe.resolved.yaml").write_text("name: done\n")
    (done / "cost_report.json").write_text("{}")
    (done / "eval" / "eval.json").write_text(json.dumps({"metric": "m", "scores": {"adapter": {"m": 1.0}}}))
    result = fleet_job.run_job(fleet_job.JobSpec("done", "/nowhere.yaml", str(tmp_path)))
    assert result.outcome == fleet_job.FINISHED and not result.started

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = fleet_job.run_job(fleet_job.JobSpec("mine", "/nowhere.yaml", str(tmp_path)))
    assert refused.outcome == fleet_job.FAILED and "not a run" in (refused.error or "")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_failure_reasons_and_retries() -> None:
    assert fleet_job.failure_reason(-9, "step 3/10 | loss 1\n") == "killed by SIGKILL (step 3/10 | loss 1)"
    assert fleet_job.failure_reason(2, "x\nerror: bad data here\n=== exit code 2\n") == "exit code 2: bad data here"
    spec = fleet_job.JobSpec("r", "/r.yaml", "/runs")
    judged = fleet_job._judge("train", 2, "error: bad", spec, "h", "started", 1.0, stopping=False)
    assert judged is not None and judged.outcome == fleet_job.FAILED and not judged.retry
    crashed = fleet_job._judge("train", -9, "", spec, "h", "started", 1.0, stopping=False)
    assert crashed is not None and crashed.retry
    stopped = fleet_job._judge("train", 130, "interrupted; checkpoint written", spec, "h", "", 1.0, stopping=True)
    assert stopped is not None and stopped.outcome == fleet_job.INTERRUPTED
    busy = fleet_job._judge("train", 2, "error: x is in use by another `train` (p)", spec, "h", "", 0, stopping=False)
    assert busy is not None and busy.outcome == fleet_job.BUSY


def test_local_backend_pins_one_job_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(parallel=None, cpus_per_job=None, gpus=["0", "1"])
    assert backend.slots == 2 and "2 GPUs" in backend.describe()
    seen: list[dict[str, str]] = []
    monkeypatch.setattr("lora_recipes.fleet.local_backend.run_job", lambda spec, stop: seen.append(dict(spec.env)))
    for name in ("a", "b"):
        backend.submit(fleet_job.JobSpec(name, "/r.yaml", str(tmp_path)))
    while backend.active():
        backend.wait(1.0)
    backend.close()
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for env in seen) == ["0", "1"]
    cpu = LocalBackend(parallel=2, cpus_per_job=None, gpus=[])
    assert cpu.slots == 2 and "2 jobs at a time" in cpu.describe()
    cpu.close()


# -- fleet.json and `fleet status` ---------------------------------------------------------------


def test_state_file_round_trip_status_and_the_driver_lock(tmp_path: Path) -> None:
    state = FleetState(str(tmp_path))
    state.recipes["a"] = RecipeRecord("a", "a.yaml", str(tmp_path / "a"), status="finished", attempts=1, score=0.5)
    state.recipes["a"].metric = "accuracy"
    state.recipes["b"] = RecipeRecord("b", "b.yaml", str(tmp_path / "b"), status="failed", attempts=3)
    state.recipes["b"].last_error = "train: exit code 1: boom"
    state.sessions.append({"started": "t0", "ended": "t1", "wall_seconds": 12.0, "backend": "local"})
    state.save(tmp_path)
    again = FleetState.load(tmp_path)
    assert again is not None and again.to_json()["recipes"] == state.to_json()["recipes"]
    assert not list(tmp_path.glob(".fleet.json.*"))  # written through a temporary file, renamed

    shown = runner.invoke(app, ["fleet", "status", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^a\s+finished\s+1\s+accuracy 0\.500", shown.stdout, re.M)
    assert "b: train: exit code 1: boom" in shown.stdout and "driver: not running" in shown.stdout
    as_json = runner.invoke(app, ["fleet", "status", str(tmp_path), "--format", "json"])
    assert json.loads(as_json.stdout)["recipes"]["b"]["attempts"] == 3
    missing = runner.invoke(app, ["fleet", "status", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "fleet.json" in missing.stderr

    with fleet_lock(tmp_path):
        assert "driver: running" in runner.invoke(app, ["fleet", "status", str(tmp_path)]).stdout
        with pytest.raises(UserError, match="in use by another `lora-recipes fleet`"), fleet_lock(tmp_path):
            pass
    assert not (tmp_path / ".fleet.lock").exists()


# -- the leaderboard -----------------------------------------------------------------------------


def fake_run(runs: Path, name: str, *, reference: str, metric: str, scores: dict[str, float], rank: int) -> Path:
    """A finished run directory as train and evaluate leave it (only the files the leaderboard reads)."""
    run = runs / name
    (run / "adapter").mkdir(parents=True)
    (run / "eval").mkdir()
    resolved = {"name": name, "base_model": "mistralai/Mistral-7B-v0.1", "evaluation": {"reference_task": reference}}
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(resolved))
    config = {"r": rank, "base_model_name_or_path": "mistralai/Mistral-7B-v0.1", "peft_type": "LORA"}
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    report = {"total_cost_usd": 1.25, "gpu_hours": 0.5, "tokens_trained": 1000, "wall_seconds": 1800.0, "steps": 10}
    (run / "cost_report.json").write_text(json.dumps(report))
    systems = {k: {"kind": k} for k in scores}
    result = {"metric": metric, "scores": {k: {metric: v} for k, v in scores.items()}, "systems": systems}
    (run / "eval" / "eval.json").write_text(json.dumps(result))
    return run


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "action", "data")]


def test_leaderboard_from_the_run_directories(tmp_path: Path) -> None:
    runs = tmp_path / "fleet"
    sst2 = fake_run(
        runs, "glue_sst2", reference="glue_sst2", metric="accuracy", scores={"base": 0.5, "adapter": 0.9}, rank=24
    )
    fake_run(runs, "e2e_nlg", reference="e2e_nlg", metric="exact_match", scores={"adapter": 0.4}, rank=8)
    (sst2 / "eval-vllm").mkdir()
    served = {"metric": "accuracy", "scores": {"glue_sst2": {"accuracy": 0.88}}}
    served["systems"] = {"glue_sst2": {"kind": "endpoint", "model": "glue_sst2"}}
    (sst2 / "eval-vllm" / "eval.json").write_text(json.dumps(served))
    state = FleetState(str(runs))
    for name in ("glue_sst2", "e2e_nlg"):
        state.recipes[name] = RecipeRecord(name, f"{name}.yaml", str(runs / name), status="finished")
    state.recipes["viggo"] = RecipeRecord("viggo", "viggo.yaml", str(runs / "viggo"), status="failed")
    state.recipes["viggo"].last_error = "train: exit code 2: bad data"
    state.sessions.append({"wall_seconds": 3700.0})
    state.save(runs)

    board = collect(runs)
    assert board["systems"] == ["base", "adapter", "served adapter", "LoRA Land Mistral-7B FT", "GPT-4", "GPT-3.5"]
    tasks = {t["name"]: t for t in board["tasks"]}
    assert tasks["glue_sst2"]["scores"]["GPT-4"] == pytest.approx(0.942)
    assert tasks["glue_sst2"]["scores"]["served adapter"] == 0.88
    assert "GPT-4" not in tasks["e2e_nlg"]["scores"]  # LoRA Land scored ROUGE there, not exact match
    assert board["mean"]["adapter"] == {"value": pytest.approx(0.65), "tasks": 2}
    assert board["totals"]["cost_usd"] == 2.5 and board["totals"]["failed"] == ["viggo"]

    md = render_markdown(board)
    assert "| glue_sst2 | accuracy | 0.500 | 0.900 | 0.880 | 0.959 | 0.942 | 0.933 |" in md
    assert f"| viggo | {MISSING} | {MISSING} | {MISSING} |" in md  # a failed task: missing cells
    assert f"| e2e_nlg | exact_match | {MISSING} | 0.400 |" in md
    assert "| **mean** over the 2 scored tasks |  | 0.500 (1) | 0.650 (2) | 0.880 (1) | 0.959 (1) |" in md
    assert "viggo (failed): train: exit code 2: bad data" in md
    assert "| glue_sst2 | finished | accuracy | 0.900 | +0.400 | 10 | 1,000 | 30:00 | 0.5000 | $1.2500 |" in md
    assert "fleet wall time 1:01:40" in md
    vllm = board["serving"]["vllm"]
    assert len(vllm) == 1 and vllm[0].startswith("vllm serve mistralai/Mistral-7B-v0.1 --enable-lora --lora-modules")
    assert f"glue_sst2={sst2 / 'adapter'}" in vllm[0] and vllm[0].endswith("--max-lora-rank 32 --max-loras 2")
    assert any("/runs/e2e_nlg/adapter" in line for line in board["serving"]["lorax"])
    assert len(board["serving"]["evaluate"]) == 2 and "--endpoint http://localhost:8000/v1 --model glue_sst2" in md

    written = write_leaderboard(runs)
    assert [p.name for p in written] == ["leaderboard.md", "leaderboard.json", "leaderboard.png", "leaderboard.html"]
    assert (runs / "leaderboard.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((runs / "leaderboard.json").read_text())["totals"]["tasks"] == 3
    page = (runs / "leaderboard.html").read_text()
    assert_self_contained(page)
    assert "<th>GPT-4</th>" in page and "viggo" in page

    result = runner.invoke(app, ["leaderboard", str(runs)])
    assert result.exit_code == 0 and "| glue_sst2 | accuracy |" in result.stdout


def assert_self_contained(page: str) -> None:
    """No http(s) anywhere; nothing loaded from outside (only the inline data: PNG); a sorting script."""
    assert re.search(r"https?:", page, re.I) is None
    links = Links()
    links.feed(page)
    assert all(ref.startswith("data:image/png;base64,") for ref in links.refs), links.refs
    assert "link" not in links.tags and "iframe" not in links.tags
    assert "<script>" in page and "<script src" not in page and "addEventListener" in page
    assert "@import" not in page and "url(" not in page


def test_vllm_rank_flag_is_the_smallest_allowed_value() -> None:
    assert [vllm_rank_flag(r) for r in (1, 2, 8, 9, 16, 24, 300, 320, 512, 513)] == [
        *(1, 8, 8, 16, 16, 32, 320, 320, 512, None),
    ]


# -- real fleets of tiny recipes (slow) ----------------------------------------------------------

# 40 and 120 quick steps, a checkpoint every 5: long enough to kill and stop them part-way.
SETS = (
    "trainer.batch_size=2",
    "trainer.gradient_accumulation_steps=1",
    "trainer.eval_steps=20",
    "trainer.steps_per_checkpoint=5",
    "data.evaluation_size=8",
    "evaluation.mode=rank",
)
STEPS = {"tiny_a": 40, "tiny_b": 120}
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the children's, and the trained-alone runs'


def write_recipes(folder: Path, reviews: Path) -> list[Path]:
    """tiny_bad (a label outside the label set), tiny_a and tiny_b (another seed, longer)."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = folder / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": f"so so {i}", "label": "neutral"}) + "\n" for i in range(30)))
    base = yaml.safe_load(RECIPE.read_text())
    files = []
    for name, data, seed in (("tiny_bad", bad, 0), ("tiny_a", reviews, 0), ("tiny_b", reviews, 1)):
        recipe = {**base, "name": name, "seed": seed, "data": {**base["data"], "dataset": str(data)}}
        recipe["trainer"] = {**base["trainer"], "train_steps": STEPS.get(name, 10)}
        files.append(folder / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return files


def fleet_command(files: list[Path], runs: Path, model_dir: Path, backend: str) -> list[str]:
    sets = [item for s in (f"base_model={model_dir}", *SETS) for item in ("--set", s)]
    return [
        *(sys.executable, "-m", "lora_recipes", "fleet", *map(str, files), "--runs", str(runs), *sets),
        *("--parallel", "2", "--backend", backend, "--base"),
    ]


@pytest.fixture(scope="module")
def fleet_recipes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fleet-recipes")
    return write_recipes(folder, write_reviews(folder / "reviews.jsonl"))


@pytest.fixture(scope="module")
def alone(fleet_recipes: list[Path], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_a and tiny_b, each trained by a plain `train`, as a user would without a fleet."""
    out = tmp_path_factory.mktemp("alone")
    env = {**os.environ, **THREADS}
    sets = [item for s in (f"base_model={tiny_model_dir}", *SETS) for item in ("--set", s)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "lora_recipes", "train", str(f), "--run-dir", str(out / f.stem), *sets],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for f in fleet_recipes[1:]
    ]
    for p in processes:
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr.decode()
    return out


def wait_for(path: Path, process: subprocess.Popen[bytes], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the fleet ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.05)


def wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text(errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {text!r} in {path}")
        time.sleep(0.1)


def train_child(run_dir: Path) -> int:
    """The PID of the `train` process holding the run directory (a child of the fleet's job)."""
    pid = int(json.loads((run_dir / ".lock").read_text())["pid"])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"lora_recipes" in cmdline and b"train" in cmdline, cmdline
    return pid


def kill_ray_worker(run_dir: Path) -> None:
    """kill -9 the Ray worker running the job of `run_dir` (its train child's parent)."""
    stat = Path(f"/proc/{train_child(run_dir)}/stat").read_text()
    worker = int(stat.rsplit(")", 1)[1].split()[1])
    assert b"ray" in Path(f"/proc/{worker}/cmdline").read_bytes().lower()
    os.kill(worker, signal.SIGKILL)


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}" / "state.json"


def fleet_state(runs: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((runs / "fleet.json").read_text())["recipes"]
    return state


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_fleet_with_bad_data_a_killed_worker_and_a_stopped_driver_finishes_on_rerun(
    backend: str, fleet_recipes: list[Path], alone: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    if backend == "ray":
        pytest.importorskip("ray")
    runs = tmp_path / "runs"
    command = fleet_command(fleet_recipes, runs, tiny_model_dir, backend)
    env = {**os.environ, **THREADS}
    log = (tmp_path / "first.log").open("wb")
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(checkpoint(runs / "tiny_a", 5), driver, "tiny_a's checkpoint 5")
        os.kill(train_child(runs / "tiny_a"), signal.SIGKILL)  # the fleet retries it: train --resume
        if backend == "ray":  # the worker itself: its child gets SIGTERM, Ray re-runs the task, which resumes
            wait_for(checkpoint(runs / "tiny_b", 5), driver, "tiny_b's checkpoint 5")
            kill_ray_worker(runs / "tiny_b")
            wait_for_text(runs / "tiny_b" / "fleet.log", "resuming from checkpoints/step-", driver)
        wait_for(checkpoint(runs / "tiny_b", 15), driver, "tiny_b's checkpoint 15")
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=300) == 130, (tmp_path / "first.log").read_text()
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    first = (tmp_path / "first.log").read_text()
    state = fleet_state(runs)
    assert state["tiny_bad"]["status"] == "failed" and "'neutral'" in state["tiny_bad"]["last_error"]
    assert state["tiny_bad"]["attempts"] == 1  # bad data is not retried
    assert state["tiny_b"]["status"] == "interrupted", first
    assert "stopping: " in first and "Traceback" not in first
    a_errors = [h["error"] or "" for h in state["tiny_a"]["history"]]
    assert any("killed by SIGKILL" in e for e in a_errors), state["tiny_a"]["history"]
    for name in ("tiny_a", "tiny_b"):  # every child stopped with the driver: no lock is held
        assert lock_holder(runs / name) is None
    assert not (runs / ".fleet.lock").exists()

    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 1, again.stderr  # tiny_bad still fails; the others finish
    state = fleet_state(runs)
    assert [state[n]["status"] for n in ("tiny_bad", "tiny_a", "tiny_b")] == ["failed", "finished", "finished"]
    assert "tiny_bad: failed: train: exit code 2:" in again.stdout
    assert "resuming from checkpoints/step-" in (runs / "tiny_b" / "fleet.log").read_text()
    for name in ("tiny_a", "tiny_b"):
        assert_same_tensors(adapter_tensors(runs / name / "adapter"), adapter_tensors(alone / name / "adapter"))
        assert state[name]["score"] is not None and state[name]["base_score"] is not None

    md = (runs / "leaderboard.md").read_text()
    assert re.search(r"^\| tiny_a \| accuracy \| \d\.\d{3} \| \d\.\d{3} \|", md, re.M), md
    assert f"| tiny_bad | {MISSING} | {MISSING} | {MISSING} |" in md
    assert "--max-lora-rank 8 --max-loras 2" in md
    assert_self_contained((runs / "leaderboard.html").read_text())
    assert (runs / "leaderboard.png").read_bytes().startswith(b"\x89PNG")

    if backend == "ray":  # the task Ray re-ran after its worker died resumed tiny_b's checkpoint
        assert (runs / "tiny_b" / "fleet.log").read_text().count("resuming from checkpoints/step-") >= 2

    finished = fleet_command(fleet_recipes[1:], runs, tiny_model_dir, backend)
    done = subprocess.run(finished, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tiny_a: finished earlier" in done.stderr and "tiny_b: finished earlier" in done.stderr
    assert fleet_state(runs)["tiny_a"]["attempts"] == state["tiny_a"]["attempts"]  # nothing ran again


@pytest.mark.slow
def test_bench_fleet_tiny(tmp_path: Path) -> None:
    """scripts/bench_fleet.py --tiny: by hand, then a fleet on each backend, in one run."""
    backends = "local,ray" if importlib.util.find_spec("ray") else "local"
    output = tmp_path / "bench.json"
    script = [sys.executable, str(ROOT / "scripts" / "bench_fleet.py")]
    done = subprocess.run(
        [*script, "--tiny", "--backends", backends, "--output", str(output)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "by-hand" in done.stdout and "fleet-local" in done.stdout and "fleet overhead" in done.stdout
    record = json.loads(output.read_text())
    assert record["baseline"] == "by-hand" and isinstance(record["ratio"], float) and record["ratio"] > 0
    assert set(record["results"]) == {"by-hand", *(f"fleet-{b}" for b in backends.split(","))}
