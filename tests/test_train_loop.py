"""The training loop on the tiny random Mistral, 4-bit NF4 on the CPU (the real QLoRA path),
trained in this process: what changes, what is saved, resume, determinism, early stopping and
the CPU trap."""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import socket
from pathlib import Path

import pytest
import torch

from lora_recipes.model import loading as models
from lora_recipes.model.source import ModelSource
from lora_recipes.recipe.loader import load_recipe
from lora_recipes.training import run_dir as rundir
from lora_recipes.training.checkpoint import checkpoint_dir
from lora_recipes.training.run_dir import RunLayout, load_run_recipe
from lora_recipes.training.train import TrainOptions, TrainResult, train
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


# Twelve steps, validation every 4, checkpoints every 4 (two kept), a price so cost is not 0.
STANDARD = ("cost.price_per_hour_usd=3.6",)


@pytest.fixture(scope="module")
def standard_run(tiny_model_dir: Path, reviews: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_tiny(tiny_model_dir, reviews, tmp_path_factory.mktemp("runs") / "standard", *STANDARD)


def base_model(folder: Path) -> torch.nn.Module:
    return models.load_base_model(ModelSource("local", str(folder), None), bits=4, device="cpu")


def test_run_directory_holds_exactly_the_expected_files(standard_run: TrainResult) -> None:
    run = standard_run.run_dir
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    checkpoint_files = {"complete.json", "optimizer.pt", "rng-0.pt", "scheduler.pt", "state.json"}
    checkpoint_files.add("trainable.safetensors")
    expected = {
        ".lora-recipes-run",  # the marker: what --overwrite may empty
        "adapter/README.md",  # the model card (training.model_card)
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "cost_report.json",
        "cost_report.md",
        "loss.png",
        "manifest.json",
        "metrics.jsonl",
        "plan.json",
        "recipe.resolved.yaml",
        # every 4 steps, the newest two kept
        *{f"checkpoints/step-{step:08d}/{f}" for step in (8, 12) for f in checkpoint_files},
    }
    assert files == expected
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 42 and set(manifest["data_hashes"]) >= {"train", "validation"}
    assert manifest["libraries"]["torch"] == importlib.metadata.version("torch")
    assert manifest["device"]["type"] == "cpu" and len(manifest["sessions"]) == 1
    plan = json.loads((run / "plan.json").read_text())
    assert plan["steps"]["total"] == 12 and plan["estimate"]["hours"] > 0


def test_resolved_recipe_loads_back_as_the_same_recipe(standard_run: TrainResult, tiny_model_dir: Path) -> None:
    reloaded = load_recipe(RunLayout(standard_run.run_dir).resolved_recipe)
    assert reloaded.recipe.base_model == str(tiny_model_dir.resolve())
    assert Path(reloaded.recipe.data.dataset).is_absolute() and Path(reloaded.recipe.data.dataset).is_file()
    assert reloaded.name == "tiny-sentiment"
    assert reloaded.recipe.trainer == load_recipe(reloaded.path).recipe.trainer
    assert reloaded.recipe.cost.price_per_hour_usd == 3.6  # --set values are part of it


def test_metrics_record_losses_padding_and_validations(standard_run: TrainResult) -> None:
    steps = metrics(standard_run.run_dir)
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)
    assert all(r["tokens"] <= r["computed_tokens"] for r in steps)
    assert all(r["padding_share"] == pytest.approx(1 - r["tokens"] / r["computed_tokens"]) for r in steps)
    assert steps[0]["learning_rate"] == 0.0 and steps[1]["learning_rate"] == pytest.approx(0.005)  # 1 warmup step
    validations = metrics(standard_run.run_dir, "validation")
    assert [r["step"] for r in validations] == [4, 8, 12]
    assert sum(r["loss"] for r in steps[-4:]) < sum(r["loss"] for r in steps[:4])  # it learns


def test_cost_report_adds_up(standard_run: TrainResult) -> None:
    report = json.loads((standard_run.run_dir / "cost_report.json").read_text())
    steps = metrics(standard_run.run_dir)
    assert report["device"] == "cpu" and report["processes"] == 1
    assert report["price_per_hour_usd"] == 3.6
    assert report["gpu_hours"] == pytest.approx(report["wall_seconds"] / 3600)
    assert report["total_cost_usd"] == pytest.approx(report["gpu_hours"] * 3.6)
    assert report["tokens_trained"] == sum(r["tokens"] for r in steps)
    assert report["tokens_computed"] == sum(r["computed_tokens"] for r in steps)
    assert report["tokens_per_second"] == pytest.approx(report["tokens_trained"] / report["wall_seconds"])
    assert 0 < report["train_seconds"] < report["wall_seconds"]
    assert report["peak_memory_bytes"] > 50 * 2**20  # this process's RSS, at least the libraries
    assert report["trainable_params"] == 3584 and report["total_params"] > report["trainable_params"]
    # A CPU run is not compared with a GPU estimate: the note says what was estimated, no errors.
    assert report["estimate"]["rows"] == {} and "CPU" in report["estimate"]["note"]
    assert report["estimate"]["note"].startswith(f"estimated for {report['estimate']['gpu']}: ")
    text = (standard_run.run_dir / "cost_report.md").read_text()
    assert f"{report['tokens_trained']:,} real" in text and "%" not in text.split("## Plan's estimate")[1]


def test_seeded_runs_are_identical_and_the_seed_matters(
    standard_run: TrainResult, tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    again = train_tiny(tiny_model_dir, reviews, tmp_path / "again", *STANDARD)
    assert [r["loss"] for r in metrics(again.run_dir)] == [r["loss"] for r in metrics(standard_run.run_dir)]
    assert_same_tensors(adapter_tensors(again.run_dir / "adapter"), adapter_tensors(standard_run.run_dir / "adapter"))
    other = train_tiny(tiny_model_dir, reviews, tmp_path / "other", *STANDARD, "seed=7", "trainer.train_steps=2")
    assert [r["loss"] for r in metrics(other.run_dir)] != [r["loss"] for r in metrics(standard_run.run_dir)][:2]


def test_resume_equals_an_uninterrupted_run(
    standard_run: TrainResult, tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "resumed"
    first = train_tiny(tiny_model_dir, reviews, run_dir, *STANDARD, stop_at_step=6)
    assert not first.finished and first.step == 6 and first.report is None
    assert (checkpoint_dir(run_dir, 6) / "state.json").is_file()
    assert not (run_dir / "cost_report.json").exists() and not (run_dir / ".lock").exists()

    second = train(load_run_recipe(run_dir), TrainOptions(run_dir=run_dir, resume=True, stream=io.StringIO()))
    assert second.finished and second.step == 12
    assert [r["loss"] for r in metrics(run_dir)] == [r["loss"] for r in metrics(standard_run.run_dir)]
    assert [r["validation_loss"] for r in metrics(run_dir, "validation")] == [
        r["validation_loss"] for r in metrics(standard_run.run_dir, "validation")
    ]
    assert_same_tensors(adapter_tensors(run_dir / "adapter"), adapter_tensors(standard_run.run_dir / "adapter"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["from_step"] for s in manifest["sessions"]] == [0, 6]


def test_only_lora_parameters_change_and_the_adapter_reloads_to_identical_logits(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    # No validation split: the adapter is the last step's weights, so it must match the live model.
    result = train_tiny(
        tiny_model_dir, reviews, tmp_path / "run", "data.split.validation_fraction=0", "trainer.train_steps=4"
    )
    trained = result.model
    assert {n for n, p in trained.named_parameters() if p.requires_grad} == {
        n for n, _ in trained.named_parameters() if ".lora_" in n
    }
    fresh = base_model(tiny_model_dir).state_dict()
    after = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v
        for k, v in trained.state_dict().items()
        if ".lora_" not in k
    }
    assert after.keys() == fresh.keys()
    for key, value in fresh.items():
        assert torch.equal(after[key].cpu(), value.cpu()), f"{key} changed"
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # the adapters did train (B starts at 0)

    reloaded = models.load_adapter(base_model(tiny_model_dir), result.run_dir / "adapter")
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 129, 200]])
    trained.eval()
    reloaded.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert torch.equal(got, expected)
    config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


TRAP = ("trainer.optimizer.type=sgd", "trainer.learning_rate=0.5", "trainer.train_steps=6", "trainer.eval_steps=2")
TRAP += ("trainer.steps_per_checkpoint=2", "trainer.checkpoints_to_keep=3", "adapter.dropout=0")


def lora_weights_by_step(run_dir: Path, steps: tuple[int, ...]) -> list[dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return [load_file(str(checkpoint_dir(run_dir, s) / "trainable.safetensors")) for s in steps]


def test_lora_weights_keep_changing_after_a_validation(tiny_model_dir: Path, reviews: Path, tmp_path: Path) -> None:
    """The CPU trap: without models.disable_cpu_inference_repack, bitsandbytes repacks 4-bit
    weights at the first no-grad eval forward and gradients stop (see the test below). Plain SGD
    moves weights only with a gradient, so any step without one shows."""
    result = train_tiny(tiny_model_dir, reviews, tmp_path / "run", *TRAP)
    steps = metrics(result.run_dir)
    assert all(r["grad_norm"] > 0 for r in steps), [r["grad_norm"] for r in steps]
    at2, at4, at6 = lora_weights_by_step(result.run_dir, (2, 4, 6))  # validations after steps 2 and 4
    for before, after in ((at2, at4), (at4, at6)):
        assert all(not torch.equal(before[k], after[k]) for k in before)


def test_without_the_repack_guard_training_stops_after_a_validation(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shows that the test above can fail: with the guard switched off, on a CPU where
    bitsandbytes uses its AVX512-BF16 inference path, gradients vanish after the first validation."""
    from bitsandbytes.nn import Linear4bit

    probe = Linear4bit(64, 64)
    if not getattr(probe, "support_avx512bf16_for_cpu", False):
        pytest.skip("bitsandbytes does not repack 4-bit weights on this CPU")
    monkeypatch.setattr(models, "disable_cpu_inference_repack", lambda model: 0)
    result = train_tiny(tiny_model_dir, reviews, tmp_path / "run", *TRAP)
    norms = [r["grad_norm"] for r in metrics(result.run_dir)]
    assert all(n > 0 for n in norms[:2]) and all(n == 0 for n in norms[2:]), norms
    at2, at4 = lora_weights_by_step(result.run_dir, (2, 4))
    assert all(torch.equal(at2[k], at4[k]) for k in at2)


def test_early_stopping_keeps_the_best_adapter(tiny_model_dir: Path, reviews: Path, tmp_path: Path) -> None:
    # A learning rate too small to change a float32 loss: no validation after the first improves.
    result = train_tiny(
        tiny_model_dir,
        reviews,
        tmp_path / "run",
        "trainer.optimizer.type=sgd",
        "trainer.learning_rate=1e-30",
        "trainer.eval_steps=1",
        "trainer.early_stop=2",
    )
    assert result.finished
    assert [r["step"] for r in metrics(result.run_dir, "validation")] == [1, 2, 3]
    assert [r["best"] for r in metrics(result.run_dir, "validation")] == [True, False, False]
    assert len(metrics(result.run_dir)) == 3
    report = result.report
    assert report is not None and report["stopped_early"] and report["adapter_step"] == 1 and report["steps"] == 3


def test_full_fine_tuning_saves_a_model_folder(tiny_model_dir: Path, reviews: Path, tmp_path: Path) -> None:
    sets = ("adapter.type=none", "quantization.bits=null", "trainer.train_steps=2", "trainer.eval_steps=2")
    result = train_tiny(tiny_model_dir, reviews, tmp_path / "run", *sets)
    assert all(p.requires_grad for p in result.model.parameters())
    assert not (result.run_dir / "adapter").exists()
    folder = result.run_dir / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    reloaded = models.load_base_model(ModelSource("local", str(folder), None), device="cpu")
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[name]), name
    before = models.load_base_model(ModelSource("local", str(tiny_model_dir), None), device="cpu").state_dict()
    assert any(not torch.equal(before[k], v) for k, v in reloaded.state_dict().items())


def test_out_of_memory_names_the_knobs(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_recipes.errors import RuntimeFailure
    from lora_recipes.training import step

    def no_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(step, "token_loss_sum", no_memory)
    with pytest.raises(RuntimeFailure) as caught:
        train_tiny(tiny_model_dir, reviews, tmp_path / "run")
    message = str(caught.value)
    assert "out of memory at step 1" in message
    for knob in ("trainer.batch_size (now 4", "preprocessing.global_max_sequence_length", "gradient_checkpointing"):
        assert knob in message
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(
    tiny_model_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # What a run killed while loading the model leaves: its resolved recipe and a dead lock.
    loaded = load_recipe(RECIPE, recipe_args(tiny_model_dir, "trainer.train_steps=2"), str(reviews))
    RunLayout(run_dir).resolved_recipe.write_text(rundir.resolved_recipe_text(loaded))
    RunLayout(run_dir).lock.write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname()}))
    result = train(load_run_recipe(run_dir), TrainOptions(run_dir=run_dir, resume=True, stream=io.StringIO()))
    assert result.finished and result.step == 2
    assert [r["step"] for r in metrics(run_dir)] == [1, 2]
    assert len(json.loads((run_dir / "manifest.json").read_text())["sessions"]) == 1
