"""Time, memory and dollar estimates for a training run, from a simple documented model.

Throughput model (per GPU):

    FLOPs per trained token  = 4 * N          forward (2N) + backward through frozen weights (2N)
                             + 2 * N          more with gradient checkpointing (forward recomputed)
    FLOPs per validation token = 2 * N
    seconds = FLOPs / (peak dense bf16 FLOP/s * MFU)

N is the base model's parameter count; LoRA's own FLOPs are under 1% of it and ignored. MFU
(model FLOPs utilisation) is what QLoRA typically reaches at batch size 1: 0.20 with 4-bit weights
(every matmul de-quantizes its weight first), 0.15 with 8-bit, 0.35 with 16-bit. Treat the result
as a planning figure within a factor of two; `train` reports the real one beside it.

Memory model: 4-bit NF4 weights take 4.127 bits per parameter with double quantization (0.5 bits
of constants without), embeddings and the LM head stay 16-bit; LoRA parameters cost 16 bytes each
(fp32 weight, gradient and two Adam moments); activations about 34 bytes x tokens x hidden size per
layer (Korthikanti et al. 2022, without the attention matrix that SDPA does not store), or
2 bytes x tokens x hidden per layer plus one layer's worth with gradient checkpointing; logits
and their gradient in fp32; plus 0.5 GiB of CUDA context.

An estimate is an architecture and a `Workload` (what the run computes, whatever it runs on)
priced on one GPU: `estimate(arch, workload, gpu, price)`, so pricing another GPU re-prices the
same workload and rebuilds nothing.

GPUs are named by the table's entries. A MIG slice of one is named `<entry> MIG <g>g.<m>gb` (what
`match_gpu` makes of a device name such as 'NVIDIA A100-SXM4-80GB MIG 1g.10gb'): it has g of the
GPU's 7 compute slices, so g/7 of its FLOP/s and of its hourly price, and its own m GiB of memory.
Clouds do not rent MIG slices by the hour; the share of the whole GPU's price is this table's
convention, so a run on a slice is not charged as a whole GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lora_recipes.model.architectures import Architecture

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    peak_tflops: float  # dense bf16 (fp16 on T4, which has no bf16)
    price_per_hour_usd: float  # on-demand, one GPU, AWS us-east-1 list prices where AWS offers it


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("T4", 16, 65, 0.53),  # g4dn.xlarge
        Gpu("L4", 24, 121, 0.80),  # g6.xlarge
        Gpu("A10G", 24, 125, 1.01),  # g5.xlarge
        Gpu("A100-40GB", 40, 312, 4.10),  # p4d.24xlarge / 8
        Gpu("A100-80GB", 80, 312, 5.12),  # p4de.24xlarge / 8
        Gpu("H100", 80, 989, 6.88),  # p5.48xlarge / 8
        Gpu("H200", 141, 989, 7.91),  # p5en.48xlarge / 8
    )
}

MFU_BY_BITS = {4: 0.20, 8: 0.15, None: 0.35}

MIG_SLICES = 7  # compute slices of an A100, H100 or H200; the "g" of a MIG profile counts them
_MIG_PROFILE = re.compile(r"\bMIG\s+(?:\d+C\.)?(\d+)G\.(\d+)GB", re.IGNORECASE)  # 1g.10gb, 1c.2g.20gb, 1g.10gb+me


def gpu_spec(gpu: str) -> Gpu:
    """The table entry `gpu`, or a MIG slice of one ('A100-80GB MIG 1g.10gb'; see the module notes)."""
    entry, _, profile = gpu.partition(" MIG ")
    spec = GPUS[entry]
    if not profile:
        return spec
    found = _MIG_PROFILE.fullmatch(f"MIG {profile}")
    if found is None:
        raise KeyError(gpu)
    share = int(found.group(1)) / MIG_SLICES
    return Gpu(gpu, int(found.group(2)), spec.peak_tflops * share, spec.price_per_hour_usd * share)


def gpu_price(gpu: str, override: float | None) -> float:
    return override if override is not None else gpu_spec(gpu).price_per_hour_usd


def match_gpu(device_name: str) -> str | None:
    """The table entry for a CUDA device name such as 'NVIDIA A100-SXM4-80GB', if any.

    Names are matched by whole words ('NVIDIA L40S' is not an L4, 'NVIDIA GH200 480GB' not an
    H200). A MIG slice ('NVIDIA A100-SXM4-80GB MIG 1g.10gb') gives 'A100-80GB MIG 1g.10gb'.
    """
    profile = _MIG_PROFILE.search(device_name)
    whole = device_name[: profile.start()] if profile else device_name
    words = set(re.findall(r"[A-Z0-9]+", whole.upper()))
    entry = next((name for name in ("T4", "L4", "A10G", "H100", "H200") if name in words), None)
    if "A100" in words:
        entry = "A100-80GB" if words & {"80G", "80GB"} else "A100-40GB"
    if entry is None or profile is None:
        return entry
    return f"{entry} MIG {profile.group(1)}g.{profile.group(2)}gb"


@dataclass(frozen=True)
class Method:
    """How the base model's weights are held and trained: what memory and FLOPs per token depend on."""

    bits: int | None  # quantization of the frozen weights; None: 16-bit
    double_quant: bool
    gradient_checkpointing: bool


@dataclass(frozen=True)
class Workload:
    """What one training run computes, whatever GPU it runs on."""

    method: Method
    trainable_params: int
    train_tokens: int  # computed tokens of every optimizer step of the run, padding included
    validation_tokens: int  # computed tokens of every validation of the run
    tokens_per_batch: int  # rows per forward pass x max length: what the activations hold at once
    basis: str  # where the counts come from


@dataclass(frozen=True)
class Estimate:
    """One run's workload on one GPU at one price; every figure follows from these four."""

    gpu: str
    price_per_hour_usd: float
    architecture: Architecture
    workload: Workload

    @property
    def flops_per_train_token(self) -> int:
        return (6 if self.workload.method.gradient_checkpointing else 4) * self.architecture.total_params

    @property
    def flops(self) -> int:
        w = self.workload
        return self.flops_per_train_token * w.train_tokens + 2 * self.architecture.total_params * w.validation_tokens

    @property
    def flops_per_second(self) -> float:
        return gpu_spec(self.gpu).peak_tflops * 1e12 * MFU_BY_BITS[self.workload.method.bits]

    @property
    def tokens_per_second(self) -> float:
        per_token = self.flops_per_train_token
        return self.flops_per_second / per_token if per_token else 0.0

    @property
    def hours(self) -> float:
        rate = self.flops_per_second
        seconds = self.flops / rate if rate else 0.0
        return seconds / 3600

    @property
    def cost_usd(self) -> float:
        return self.hours * self.price_per_hour_usd

    @property
    def peak_memory_bytes(self) -> int:
        return peak_memory(self.architecture, self.workload)

    @property
    def fits_in_memory(self) -> bool:
        return self.peak_memory_bytes <= gpu_spec(self.gpu).memory_gib * GIB

    def to_json(self) -> dict[str, object]:
        return {
            "gpu": self.gpu,
            "price_per_hour_usd": self.price_per_hour_usd,
            "train_tokens": self.workload.train_tokens,
            "validation_tokens": self.workload.validation_tokens,
            "flops": self.flops,
            "tokens_per_second": self.tokens_per_second,
            "hours": self.hours,
            "cost_usd": self.cost_usd,
            "peak_memory_bytes": self.peak_memory_bytes,
            "fits_in_memory": self.fits_in_memory,
            "basis": self.workload.basis,
        }


@dataclass(frozen=True)
class UnknownEstimate:
    """No estimate: the plan lacks what one needs (`reason` says what)."""

    gpu: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"gpu": self.gpu, "hours": None, "cost_usd": None, "reason": self.reason}


def estimate(arch: Architecture, workload: Workload, gpu: str, price_override: float | None) -> Estimate:
    """`workload` on `gpu` at its table price, or at `price_override` per hour when given."""
    return Estimate(gpu, gpu_price(gpu, price_override), arch, workload)


def peak_memory(arch: Architecture, workload: Workload) -> int:
    method = workload.method
    total, trainable, tokens = arch.total_params, workload.trainable_params, workload.tokens_per_batch
    body = max(total - arch.embedding_params, 0)
    if method.bits == 4:
        bits_per_param = 4.127 if method.double_quant else 4.5
    elif method.bits == 8:
        bits_per_param = 8.0
    else:
        bits_per_param = 16.0
    weights = body * bits_per_param / 8 + arch.embedding_params * 2
    if trainable >= total:  # full fine-tuning: 16-bit weights + fp32 grads and moments
        weights = total * 2
        adapter = total * 12
    else:
        adapter = trainable * 16
    if method.gradient_checkpointing:
        activations = tokens * arch.hidden_size * (2 * arch.num_layers + 34)
    else:
        activations = tokens * arch.hidden_size * 34 * arch.num_layers
    logits = tokens * arch.vocab_size * 4 * 2
    return int(weights + adapter + activations + logits + 0.5 * GIB)
