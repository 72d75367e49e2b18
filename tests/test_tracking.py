"""Experiment tracking on the tiny model: a run tracked into TensorBoard, MLflow's embedded store
and W&B (offline) is read back with each library's own reader; a resumed run continues its own
tracking runs, and a new run in the same folder starts new ones. The adapter's model card parses
with huggingface_hub."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

from lora_recipes.training.run_dir import RunLayout, load_run_recipe
from lora_recipes.training.train import TrainOptions, TrainResult, train
from test_train_support import metrics, train_tiny, write_reviews

pytestmark = [
    pytest.mark.slow,
    # MLflow's SQLite store, through SQLAlchemy 2.1 (a note for MLflow, not for this project)
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"),
]

HAS_WANDB = importlib.util.find_spec("wandb") is not None
TRACKED = ("trainer.train_steps=4", "trainer.eval_steps=2", "trainer.steps_per_checkpoint=2")


def trackers() -> str:
    names = ["tensorboard", "mlflow"] + (["wandb"] if HAS_WANDB else [])
    return f"trainer.report_to=[{', '.join(names)}]"


def offline(mp: pytest.MonkeyPatch) -> None:
    """W&B offline and quiet; MLflow's embedded store (no MLFLOW_TRACKING_URI)."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reviews") / "reviews.jsonl")


@pytest.fixture(scope="module")
def resumed_run(
    tiny_model_dir: Path, reviews: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, TrainResult]:
    """A tracked run stopped after step 2 (its checkpoint) and resumed to step 4; the tracking ids
    the first session wrote, and the result."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    mp = pytest.MonkeyPatch()  # a module fixture cannot use the function-scoped monkeypatch
    offline(mp)
    try:
        run_dir = tmp_path_factory.mktemp("runs") / "try"
        stopped = train_tiny(tiny_model_dir, reviews, run_dir, *TRACKED, trackers(), stop_at_step=2)
        assert not stopped.finished
        first = json.loads(RunLayout(run_dir).tracking.read_text())
        result = train(load_run_recipe(run_dir), TrainOptions(run_dir=run_dir, resume=True, stream=io.StringIO()))
    finally:
        mp.undo()
    assert result.finished
    return first, result


def test_mlflow_embedded_store_holds_params_metrics_and_artifacts(resumed_run: tuple[dict, TrainResult]) -> None:
    import mlflow
    from mlflow import MlflowClient

    first, result = resumed_run
    ids = json.loads(RunLayout(result.run_dir).tracking.read_text())["mlflow"]
    # the embedded default: a SQLite store beside the run directory, artifacts beside it too
    assert ids["tracking_uri"] == f"sqlite:///{result.run_dir.parent / 'mlflow.db'}" and ids["embedded"]
    assert ids["run_id"] == first["mlflow"]["run_id"]  # the resumed session continued its own run
    mlflow.set_tracking_uri(ids["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["lora-recipes"], output_format="list")
    assert [r.info.run_id for r in runs] == [ids["run_id"]]  # one run, not one per session
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "try"
    params = run.data.params
    assert params["trainer.learning_rate"] == "0.005" and params["adapter.r"] == "8" and params["run_dir"] == "try"
    assert params["prompt.template"] == "Review: {text} Sentiment:"
    client = MlflowClient()
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    expected = {r["step"]: r["loss"] for r in metrics(result.run_dir)}
    assert {m.step: m.value for m in losses} == pytest.approx(expected)
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]  # no step twice across the two sessions
    validation = client.get_metric_history(run.info.run_id, "validation/validation_loss")
    assert sorted(m.step for m in validation) == [2, 4]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "loss.png", "cost_report.json", "cost_report.md", "plan.json", "recipe.resolved.yaml"} <= top
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/README.md"} <= adapter
    assert (result.run_dir.parent / "mlartifacts" / run.info.run_id).is_dir()


def test_tensorboard_event_files_read_back(resumed_run: tuple[dict, TrainResult]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = resumed_run
    events = EventAccumulator(str(RunLayout(result.run_dir).tensorboard))
    events.Reload()
    assert {"train/loss", "train/learning_rate", "validation/validation_loss"} <= set(events.Tags()["scalars"])
    expected = {r["step"]: r["loss"] for r in metrics(result.run_dir)}
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(expected)
    assert [e.step for e in events.Scalars("validation/validation_loss")] == [2, 4]


def test_the_adapter_has_a_model_card_the_hub_reads(resumed_run: tuple[dict, TrainResult]) -> None:
    from huggingface_hub import ModelCard

    _, result = resumed_run
    card = ModelCard.load(str(RunLayout(result.run_dir).adapter / "README.md"))
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-generation"
    assert data["tags"][:2] == ["lora", "qlora"] and "tiny-sentiment" in data["tags"]
    assert "base_model" not in data  # a local folder that names no hub model: no path in its place
    assert "Review: {text} Sentiment:" in card.text and "vllm serve" in card.text and "lorax" in card.text
    assert "## Cost" in card.text and "sha256:" in card.text


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed")
def test_wandb_runs_are_the_run_directorys_own(
    resumed_run: tuple[dict, TrainResult], tiny_model_dir: Path, reviews: Path
) -> None:
    """(Last in this file: it trains another recipe into the resumed run's folder.)"""
    first, result = resumed_run
    layout = RunLayout(result.run_dir)
    resumed_id = json.loads(layout.tracking.read_text())["wandb"]["id"]
    assert resumed_id == first["wandb"]["id"] and resumed_id.startswith("try-")
    offline = {p.name.rsplit("-", 1)[-1] for p in layout.wandb.glob("offline-run-*")}
    assert offline == {resumed_id.rsplit("-", 1)[-1]}  # both sessions wrote the same W&B run
    # Another recipe trained into the same folder (--overwrite) gets a W&B run of its own.
    again = train_tiny(
        tiny_model_dir, reviews, result.run_dir, *TRACKED, "trainer.report_to=[wandb]", "name=other", overwrite=True
    )
    assert again.finished
    new_id = json.loads(layout.tracking.read_text())["wandb"]["id"]
    assert new_id != resumed_id and new_id.startswith("try-")


def test_a_new_run_in_the_same_folder_gets_a_new_mlflow_run_and_artifacts_can_be_left_out(
    resumed_run: tuple[dict, TrainResult], tiny_model_dir: Path, reviews: Path
) -> None:
    """(After the W&B test: it trains into the resumed run's folder again.)"""
    import mlflow
    from mlflow import MlflowClient

    first, result = resumed_run
    again = train_tiny(
        tiny_model_dir,
        reviews,
        result.run_dir,
        *TRACKED,
        "trainer.report_to=[mlflow]",
        "tracking.artifacts=false",
        "name=third",
        overwrite=True,
    )
    assert again.finished
    ids = json.loads(RunLayout(result.run_dir).tracking.read_text())["mlflow"]
    assert ids["run_id"] != first["mlflow"]["run_id"]
    mlflow.set_tracking_uri(ids["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["lora-recipes"], output_format="list")
    assert {r.info.run_id for r in runs} == {ids["run_id"], first["mlflow"]["run_id"]}  # the old run stays
    client = MlflowClient()
    assert client.get_metric_history(ids["run_id"], "train/loss")  # tracked ...
    assert client.list_artifacts(ids["run_id"]) == []  # ... without its files
    assert client.list_artifacts(first["mlflow"]["run_id"])  # the first run's files are untouched
