"""Where training meets planning/: the run's plan (with the data as measured), the price of the
device it runs on, and the cost report at the end. No other module of training/ calls
`build_plan`, reads a plan, or uses planning.cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lora_recipes.planning import cost
from lora_recipes.planning.estimate import Estimate, UnknownEstimate
from lora_recipes.planning.plan import Counts, build_plan, estimate_on
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.training.manifest import Device

if TYPE_CHECKING:
    from accelerate import Accelerator

    from lora_recipes.model.loading import ModelSummary
    from lora_recipes.training.checkpoint import TrainingState

BASIS = "measured: the prepared data's rows and computed tokens (batches as trained, padding included)"


@dataclass(frozen=True)
class Measured:
    """The prepared data as the run trains it: the plan's inputs in place of its guesses."""

    train_rows: int
    validation_rows: int
    train_tokens_per_epoch: int  # computed tokens, padding included, all processes
    validation_tokens: int
    max_length: int
    processes: int


@dataclass(frozen=True)
class RunPlan:
    """What training needs from the plan."""

    document: dict[str, Any]  # plan.json: the plan with the measured data
    warnings: tuple[str, ...]
    estimate: Estimate | UnknownEstimate  # on the GPU the run is on when the price table has it, else cost.gpu
    device: Device
    price: cost.Price

    @property
    def cost_per_second(self) -> float:
        """Dollars per second of wall time, all processes."""
        return self.price.per_hour_usd * self.device.processes / 3600


def plan_run(loaded: LoadedRecipe, data_report: dict[str, Any], measured: Measured, device_type: str) -> RunPlan:
    """The plan of this run, priced on the device it runs on."""
    m, recipe = measured, loaded.recipe
    counts = Counts(m.train_rows, m.validation_rows, m.train_tokens_per_epoch, m.validation_tokens, m.max_length, BASIS)
    plan = build_plan(loaded, data=data_report, measured=counts, processes=m.processes)
    name = cost.device_name(device_type)
    price = cost.device_price(device_type, name, recipe.cost)
    estimate = plan.estimate
    if price.gpu is not None and price.gpu != recipe.cost.gpu:  # compare with the GPU the run is on
        estimate = estimate_on(plan, price.gpu, recipe.cost.price_per_hour_usd)
    device = Device(device_type, name, m.processes)
    return RunPlan(plan.to_json(), plan.warnings, estimate, device, price)


def peak_memory(accelerator: Accelerator, device_type: str) -> cost.PeakMemory:
    """The largest peak memory of any process, allocated and (on GPUs) reserved (see
    planning.cost.PeakMemory)."""
    import torch

    here = cost.peak_memory(device_type)
    mine = torch.tensor([[here.allocated, here.reserved or 0]], dtype=torch.int64, device=accelerator.device)
    allocated, reserved = (int(x) for x in accelerator.gather(mine).max(dim=0).values.tolist())
    return cost.PeakMemory(allocated, reserved if here.reserved is not None else None)


def cost_report(
    plan: RunPlan, state: TrainingState, summary: ModelSummary, peak: cost.PeakMemory, adapter_step: int | None
) -> dict[str, Any]:
    """What the run cost (cost_report.json), beside the plan's estimate, and which step's adapter
    it kept."""
    report = cost.cost_report(
        device_type=plan.device.type,
        name=plan.device.name,
        processes=plan.device.processes,
        price=plan.price,
        wall_seconds=state.seconds,
        train_seconds=state.train_seconds,
        tokens_trained=state.tokens_real,
        tokens_computed=state.tokens_computed,
        peak_memory=peak,
        total_params=summary.total_params,
        trainable_params=summary.trainable_params,
        steps=state.step,
        estimate=plan.estimate,
    )
    report["adapter_step"] = adapter_step
    report["best_validation_loss"] = state.best_validation_loss
    report["stopped_early"] = state.stopped_early
    return report


def render_cost_report(report: dict[str, Any]) -> str:
    """cost_report.md."""
    return cost.render_markdown(report)
