"""Where training meets planning (training/run_plan.py): the run's plan from the measured data,
and its estimate priced on the GPU the run is on. No model is loaded: the GPU is pretended."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_recipes.planning import cost
from lora_recipes.training.manifest import Device
from lora_recipes.training.run_plan import Measured, plan_run
from test_train_support import load

pytestmark = pytest.mark.slow  # the tiny model's folder gives the plan its architecture

MEASURED = Measured(
    train_rows=84,
    validation_rows=24,
    train_tokens_per_epoch=2_000,
    validation_tokens=600,
    max_length=40,
    processes=1,
)


@pytest.fixture
def on_an_h100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "device_name", lambda device_type: "NVIDIA H100 80GB HBM3")


def test_a_gpu_run_is_estimated_on_its_own_gpu(on_an_h100: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load(tiny_model_dir, tmp_path / "rows.jsonl", "cost.gpu=T4")
    planned = plan_run(loaded, {}, MEASURED, "cuda")
    assert planned.device == Device("cuda", "NVIDIA H100 80GB HBM3", 1)
    assert planned.price.gpu == "H100" and planned.price.per_hour_usd > 0
    assert planned.cost_per_second == pytest.approx(planned.price.per_hour_usd / 3600)
    assert planned.estimate.gpu == "H100"
    assert planned.document["estimate"]["gpu"] == "T4"  # plan.json keeps the recipe's GPU
    assert planned.document["steps"]["total"] == 12


def test_a_cpu_run_keeps_the_recipes_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load(tiny_model_dir, tmp_path / "rows.jsonl", "cost.gpu=T4", "cost.price_per_hour_usd=3.6")
    planned = plan_run(loaded, {}, MEASURED, "cpu")
    assert planned.estimate.gpu == "T4" and planned.price.per_hour_usd == 3.6 and planned.price.gpu is None
    assert planned.document["estimate"] == planned.estimate.to_json()
