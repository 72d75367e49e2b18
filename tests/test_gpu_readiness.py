"""What a first GPU run would hit, shown on the CPU: precision from the compute capability, the
process group's timeout, checkpoints read onto the CPU, the memory model's fp32 upcasts, the
per-micro-batch 4-bit de-quantization, allocated and reserved peaks in the cost report, the paged
optimizers, and GPU names. scripts/gpu_check.py proves the same path on a GPU."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from lora_recipes.errors import UserError
from lora_recipes.model import loading as models
from lora_recipes.model.architectures import KNOWN, from_config, lora_trainable_params
from lora_recipes.planning import cost
from lora_recipes.planning.cost import PeakMemory, device_price
from lora_recipes.planning.estimate import (
    DEQUANT_BYTES_PER_PARAM,
    GIB,
    GPUS,
    MFU_BY_BITS,
    Estimate,
    Method,
    Workload,
    estimate,
    match_gpu,
    memory_terms,
    peak_memory,
)
from lora_recipes.planning.plan import build_plan
from lora_recipes.recipe.loader import RecipeInvalid, load_recipe
from lora_recipes.recipe.types import Cost

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "tests" / "fixtures" / "train" / "tiny_sentiment.yaml"
JIGSAW = ROOT / "recipes" / "jigsaw.yaml"

# Llama-3-8B's config.json (public): a 128k vocabulary, untied embeddings.
LLAMA_3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}  # fmt: skip


# -- precision from the compute capability ------------------------------------------------------


def precision(dtype: str = "auto", compute: str = "bfloat16", capability: tuple[int, int] | None = (8, 0),
              device: str = "cuda", **kwargs: Any) -> models.Precision:  # fmt: skip
    return models.resolve_precision(dtype, compute, device_type=device, capability=capability, **kwargs)


@pytest.mark.parametrize(
    ("capability", "weights", "compute", "mixed"),
    [
        ((7, 0), "float16", "float16", "fp16"),  # V100
        ((7, 5), "float16", "float16", "fp16"),  # T4: torch.cuda.is_bf16_supported() says True here
        ((8, 0), "bfloat16", "bfloat16", "bf16"),  # A100
        ((8, 6), "bfloat16", "bfloat16", "bf16"),  # A10G
        ((9, 0), "bfloat16", "bfloat16", "bf16"),  # H100
    ],
)
def test_auto_precision_follows_the_compute_capability(
    capability: tuple[int, int], weights: str, compute: str, mixed: str
) -> None:
    p = precision(capability=capability)
    assert (p.weights, p.compute, p.mixed_precision) == (weights, compute, mixed)
    assert p.dtype == models.DTYPES[weights]
    # The bf16 compute default is changed below 8.0, and says so; `auto` weights need no note.
    assert [n.split(":")[0] for n in p.notes] == (
        ["quantization.bnb_4bit_compute_dtype"] if capability < (8, 0) else []
    )
    assert models.resolve_dtype("auto", "cuda", capability) == models.DTYPES[weights]


def test_explicit_bfloat16_below_ampere_becomes_float16_with_a_note() -> None:
    p = precision("bfloat16", capability=(7, 5))
    assert (p.weights, p.compute, p.mixed_precision) == ("float16", "float16", "fp16")
    assert any("model_parameters.dtype" in n and "compute capability 7.5" in n for n in p.notes)
    # Not quantized: the compute type does not matter and is not mentioned.
    assert not any("bnb_4bit" in n for n in precision(capability=(7, 5), bits=None).notes)
    # float16 and float32 are kept as asked; float32 weights train without autocast.
    assert precision("float16", "float16", capability=(9, 0)).mixed_precision == "fp16"
    assert precision("float32", capability=(9, 0)).mixed_precision == "no"


def test_full_fine_tuning_in_float16_keeps_float32_master_weights() -> None:
    """GradScaler cannot unscale float16 gradients: the weights stay float32 under fp16 autocast."""
    for p in (precision("float16", capability=(9, 0), full=True), precision(capability=(7, 5), full=True)):
        assert (p.weights, p.mixed_precision) == ("float32", "fp16")
        assert any("full fine-tuning in float16" in n for n in p.notes)
    assert precision(capability=(9, 0), full=True).weights == "bfloat16"  # bf16 needs no loss scaling


def test_the_cpu_trains_in_float32_without_autocast() -> None:
    p = precision(device="cpu", capability=None, cpu_bf16=True)
    assert (p.weights, p.compute, p.mixed_precision, p.notes) == ("float32", "bfloat16", "no", ())
    assert models.device_capability("cpu") is None


def test_a_cpu_without_bfloat16_instructions_computes_in_float32_with_a_note() -> None:
    p = precision(device="cpu", capability=None, cpu_bf16=False)
    assert (p.weights, p.compute, p.mixed_precision) == ("float32", "float32", "no")
    assert len(p.notes) == 1 and p.notes[0].startswith("quantization.bnb_4bit_compute_dtype: this CPU has no bfloat16")
    full = precision("bfloat16", "bfloat16", device="cpu", capability=None, cpu_bf16=False, full=True, bits=None)
    assert (full.weights, full.compute) == ("float32", "float32")
    assert [n.split(":")[0] for n in full.notes] == ["model_parameters.dtype"]  # no 4-bit compute to speak of
    kept = precision("float16", "float16", device="cpu", capability=None, cpu_bf16=False)
    assert (kept.weights, kept.compute, kept.notes) == ("float16", "float16", ())  # only bfloat16 is emulated
    # Unless told, the CPU is asked: what torch says about this machine's instructions.
    native = models.cpu_has_bf16()
    assert precision(device="cpu", capability=None).compute == ("bfloat16" if native else "float32")


# -- the accelerator: process-group timeout and mixed precision -----------------------------------


def test_process_group_timeout_defaults_to_two_hours_and_reads_the_environment() -> None:
    from lora_recipes.training.train import PROCESS_GROUP_TIMEOUT_ENV, process_group_timeout

    assert process_group_timeout({}) == dt.timedelta(hours=2)
    assert process_group_timeout({PROCESS_GROUP_TIMEOUT_ENV: "900"}) == dt.timedelta(seconds=900)
    for bad in ("0", "-5", "soon", "nan", "inf"):
        with pytest.raises(UserError, match=PROCESS_GROUP_TIMEOUT_ENV):
            process_group_timeout({PROCESS_GROUP_TIMEOUT_ENV: bad})


def test_the_accelerator_gets_the_timeout_and_the_resolved_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_recipes.training.train import PROCESS_GROUP_TIMEOUT_ENV, _start_accelerator

    recipe = load_recipe(TINY_RECIPE, ["trainer.device=cpu"]).recipe
    monkeypatch.delenv(PROCESS_GROUP_TIMEOUT_ENV, raising=False)
    accelerator, device_type, p = _start_accelerator(recipe)
    assert device_type == "cpu" and p.mixed_precision == "no"
    assert accelerator.init_handler is not None
    assert accelerator.init_handler.timeout == dt.timedelta(hours=2)
    # What accelerate hands torch.distributed.init_process_group when it starts a process group.
    assert accelerator.init_handler.to_kwargs()["timeout"] == dt.timedelta(hours=2)
    monkeypatch.setenv(PROCESS_GROUP_TIMEOUT_ENV, "5400")
    accelerator, _, _ = _start_accelerator(recipe)
    assert accelerator.init_handler.to_kwargs()["timeout"] == dt.timedelta(seconds=5400)


# -- checkpoints are read onto the CPU -------------------------------------------------------------

_TAG_AS_CUDA = [False]


def _cuda_tagger(storage: Any) -> str | None:
    return "cuda:0" if _TAG_AS_CUDA[0] else None


def _no_deserializer(storage: Any, location: str) -> None:
    return None


# What torch.save writes for a tensor on GPU 0 is its storage's location tag, "cuda:0"; this
# tagger (first in torch's registry, inert unless switched on) writes that tag for CPU tensors, so
# a checkpoint saved here is one saved on a GPU as far as loading is concerned.
torch.serialization.register_package(1, _cuda_tagger, _no_deserializer)


def test_a_checkpoint_saved_on_gpu_0_is_restored_through_the_cpu(tmp_path: Path) -> None:
    from accelerate import Accelerator

    from lora_recipes.training import checkpoint
    from lora_recipes.training.run_dir import CheckpointLayout, RunLayout
    from lora_recipes.training.step import Trainables

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # frozen, as a base model's weights are
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    trainables = Trainables(model, model, optimizer, scheduler, max_norm=1.0, logits_mask=False)
    accelerator = Accelerator(cpu=True)
    layout = RunLayout(tmp_path / "run")
    _TAG_AS_CUDA[0] = True
    try:
        folder = checkpoint.save_checkpoint(layout, checkpoint.TrainingState(step=1), trainables, accelerator, keep=2)
    finally:
        _TAG_AS_CUDA[0] = False
    files = CheckpointLayout(folder)
    if not torch.cuda.is_available():  # the defect: without map_location torch rebuilds the tensors on GPU 0
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(files.optimizer, weights_only=True)
    saved = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items() if isinstance(v, torch.Tensor)}
    optimizer.state.clear()
    state = checkpoint.load_checkpoint(folder, trainables, rank=0, world_size=1)
    assert state.step == 1
    restored = optimizer.state_dict()["state"][0]
    for key, value in saved.items():
        assert restored[key].device.type == "cpu" and torch.equal(restored[key], value), key


# -- the memory model -------------------------------------------------------------------------------


def qlora_workload(arch: Any, tokens: int, *, gradient_checkpointing: bool = False, bits: int | None = 4) -> Workload:
    method = Method(bits=bits, double_quant=True, gradient_checkpointing=gradient_checkpointing)
    trainable = lora_trainable_params(arch, ("q_proj", "v_proj"), 8)
    return Workload(method, trainable, 0, 0, tokens, "test")


def test_kbit_preparation_upcasts_embeddings_lm_head_and_norms_to_fp32() -> None:
    llama3 = from_config(LLAMA_3_8B, "llama-3-8b")
    assert llama3 is not None
    for arch, extra_gib in ((KNOWN["mistral-7b"], 0.49), (llama3, 1.96)):
        terms = memory_terms(arch, qlora_workload(arch, 512))
        assert terms["upcast"] / GIB == pytest.approx(extra_gib, abs=0.01)  # +2 bytes per unquantized weight
        assert memory_terms(arch, qlora_workload(arch, 512, bits=None))["upcast"] == 0  # no k-bit preparation
        assert peak_memory(arch, qlora_workload(arch, 512)) == sum(terms.values())


def test_the_fp32_residual_stream_is_in_the_activations() -> None:
    arch, tokens = KNOWN["mistral-7b"], 8 * 600
    h, i, layers = arch.hidden_size, arch.intermediate_size, arch.num_layers
    terms = memory_terms(arch, qlora_workload(arch, tokens))
    assert terms["activations"] == tokens * 34 * h * layers
    assert terms["fp32_stream"] == tokens * layers * 2 * (2 * h + 3 * i)
    ckpt = memory_terms(arch, qlora_workload(arch, tokens, gradient_checkpointing=True))
    assert ckpt["fp32_stream"] == tokens * (2 * h * layers + 2 * (2 * h + 3 * i))  # saved inputs at 4 bytes
    assert ckpt["activations"] + ckpt["fp32_stream"] < terms["activations"] + terms["fp32_stream"]
    assert memory_terms(arch, qlora_workload(arch, tokens, bits=None))["fp32_stream"] == 0


# -- throughput: the A10G, and 4-bit de-quantization per micro-batch ---------------------------------


def test_the_a10g_is_priced_with_its_own_tensor_throughput() -> None:
    assert GPUS["A10G"].peak_tflops == 70 and GPUS["A10G"].memory_bandwidth_gbs == 600
    assert all(g.memory_bandwidth_gbs > 0 for g in GPUS.values())


def test_four_bit_dequantization_is_paid_per_micro_batch() -> None:
    arch, gpu = KNOWN["llama-2-7b"], GPUS["A100-80GB"]
    quantized = arch.total_params - arch.embedding_params
    per_pass = quantized * DEQUANT_BYTES_PER_PARAM / (gpu.memory_bandwidth_gbs * 1e9)

    def run(rows_per_batch: int, gradient_checkpointing: bool = False, tokens: int = 150 * 64) -> Any:
        method = Method(bits=4, double_quant=True, gradient_checkpointing=gradient_checkpointing)
        micro = tokens // (150 * rows_per_batch)
        work = Workload(method, 4_194_304, tokens, 0, 150 * rows_per_batch, "test", train_micro_batches=micro)
        return estimate(arch, work, "A100-80GB", None)

    one, eight = run(1), run(8)
    compute = 4 * arch.total_params * 150 * 64 / (gpu.peak_tflops * 1e12 * MFU_BY_BITS[4])
    assert one.train_seconds == pytest.approx(compute + 64 * 2 * per_pass)  # forward and backward
    assert eight.train_seconds == pytest.approx(compute + 8 * 2 * per_pass)
    assert one.tokens_per_second < eight.tokens_per_second
    assert run(1, gradient_checkpointing=True).train_seconds == pytest.approx(compute * 1.5 + 64 * 3 * per_pass)
    # The documented calibration: a 512-token micro-batch of LLaMA-2-7B on an A100, about 2,400 tokens/s.
    calibration = Workload(Method(4, True, False), 4_194_304, 512 * 100, 0, 512, "test", train_micro_batches=100)
    assert estimate(arch, calibration, "A100-80GB", None).tokens_per_second == pytest.approx(2400, rel=0.03)
    # Not 4-bit, or no micro-batch count: no de-quantization term.
    sixteen = Workload(Method(None, True, False), 4_194_304, 150 * 64, 0, 150, "test", train_micro_batches=64)
    assert estimate(arch, sixteen, "A100-80GB", None).dequantize_seconds_per_pass == 0


def test_the_plan_counts_micro_batches() -> None:
    plan = build_plan(load_recipe(JIGSAW))
    assert isinstance(plan.estimate, Estimate)
    work = plan.estimate.workload
    t = load_recipe(JIGSAW).recipe.trainer
    steps = plan.training.steps
    assert steps is not None
    assert work.train_micro_batches == steps.total * t.gradient_accumulation_steps  # batch size 1
    assert work.validation_micro_batches > 0


# -- the cost report: allocated and reserved peaks -------------------------------------------------


def report(peak: int | PeakMemory, device_type: str = "cuda") -> dict[str, Any]:
    price = cost.Price(5.12, "A100-80GB", "test")
    return cost.cost_report(
        device_type=device_type, name="NVIDIA A100-SXM4-80GB", processes=1, price=price, wall_seconds=100,
        train_seconds=80, tokens_trained=1000, tokens_computed=1200, peak_memory=peak, total_params=10,
        trainable_params=1, steps=5, estimate=None,
    )  # fmt: skip


def test_the_cost_report_records_allocated_and_reserved_peaks() -> None:
    gpu = report(PeakMemory(10 * GIB, 12 * GIB))
    assert gpu["peak_memory_bytes"] == 10 * GIB and gpu["peak_memory_reserved_bytes"] == 12 * GIB
    assert "10.00 GiB allocated, 12.00 GiB reserved" in cost.render_markdown(gpu)
    cpu = report(2 * GIB, "cpu")
    assert cpu["peak_memory_reserved_bytes"] is None and "process peak RSS" in cost.render_markdown(cpu)
    assert cost.peak_memory("cpu").reserved is None and cost.peak_memory("cpu").allocated > 0


# -- optimizers ------------------------------------------------------------------------------------


def test_paged_adamw_32bit_is_offered_and_needs_cuda() -> None:
    param = torch.nn.Parameter(torch.zeros(4))
    for kind in ("paged_adamw_8bit", "paged_adamw_32bit"):
        with pytest.raises(UserError, match=f"{kind} needs a CUDA GPU"):
            models.build_optimizer([param], type=kind, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
        load_recipe(TINY_RECIPE, [f"trainer.optimizer.type={kind}", "trainer.device=cuda"])  # valid
        with pytest.raises(RecipeInvalid, match=f"{kind} needs a CUDA GPU"):
            load_recipe(TINY_RECIPE, [f"trainer.optimizer.type={kind}", "trainer.device=cpu"])


def test_nothing_of_an_r8_q_v_adapter_is_paged() -> None:
    """bitsandbytes pages tensors of at least 100,000 elements: LoRA r=8 on Mistral-7B's q_proj and
    v_proj has none (4096 x 8 = 32,768 at most)."""
    arch = KNOWN["mistral-7b"]
    shapes = [(8, fan_in) for fan_in, _ in (arch.linear_shapes()[m] for m in ("q_proj", "v_proj"))]
    shapes += [(fan_out, 8) for _, fan_out in (arch.linear_shapes()[m] for m in ("q_proj", "v_proj"))]
    lora = [torch.nn.Parameter(torch.empty(shape, device="meta")) for shape in shapes]
    assert models.paged_state_share(lora) == 0.0
    big = torch.nn.Parameter(torch.empty(models.PAGED_MIN_ELEMENTS, device="meta"))
    small = sum(p.numel() for p in lora)
    assert models.paged_state_share([*lora, big]) == pytest.approx(big.numel() / (small + big.numel()))


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU:UserWarning")
def test_a_resumed_paged_optimizer_gets_its_state_back_through_get_state_buffer() -> None:
    """bitsandbytes' load_state_dict makes every state tensor an ordinary one; load_optimizer_state
    puts each back through get_state_buffer (paged on CUDA, where gpu_check shows it; an ordinary
    buffer here) without changing a value: the next step is the uninterrupted run's."""
    bnb = pytest.importorskip("bitsandbytes")

    def make() -> tuple[torch.nn.Parameter, Any]:
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(2 * models.PAGED_MIN_ELEMENTS))
        return param, bnb.optim.PagedAdamW32bit([param], lr=1e-2)

    param, optimizer = make()
    for _ in range(2):
        param.grad = torch.randn_like(param)
        optimizer.step()
    resumed, fresh = make()
    resumed.data.copy_(param.data)
    handed_out: list[torch.Tensor] = []
    original = fresh.get_state_buffer

    def get_state_buffer(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        handed_out.append(original(p, dtype))
        return handed_out[-1]

    fresh.get_state_buffer = get_state_buffer  # the buffers bitsandbytes hands out, recorded
    models.load_optimizer_state(fresh, optimizer.state_dict())
    assert [id(b) for b in handed_out] == [id(fresh.state[resumed][k]) for k in ("state1", "state2")]
    assert all(torch.equal(fresh.state[resumed][k], optimizer.state[param][k]) for k in ("state1", "state2"))
    gradient = torch.randn_like(param)
    param.grad, resumed.grad = gradient.clone(), gradient.clone()
    optimizer.step()
    fresh.step()
    assert torch.equal(param, resumed)
    # A torch optimizer is loaded as it always was.
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    models.load_optimizer_state(plain, plain.state_dict())


# -- GPU names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "table_entry"),
    [("NVIDIA L40S", "A10G"), ("NVIDIA L40", "A10G"), ("NVIDIA GH200 480GB", "A10G"), ("NVIDIA GH200 144G HBM3e", "A10G"),
     ("NVIDIA L4", "L4"), ("NVIDIA H200", "H200")],
)  # fmt: skip
def test_an_l40s_or_gh200_is_not_priced_as_an_l4_or_h200(name: str, table_entry: str) -> None:
    """Not in the table: priced as cost.gpu (here A10G) and said so, never as the L4 or H200."""
    price = device_price("cuda", name, Cost(gpu="A10G", price_per_hour_usd=None))
    assert price.gpu == table_entry
    assert (match_gpu(name) is None) == (table_entry == "A10G")
    if table_entry == "A10G":
        assert "not in the built-in table" in price.note


def test_every_known_architecture_has_a_memory_estimate() -> None:
    for arch, bits, ckpt in itertools.product(KNOWN.values(), (4, 8, None), (False, True)):
        assert peak_memory(arch, qlora_workload(arch, 256, gradient_checkpointing=ckpt, bits=bits)) > 0.5 * GIB
