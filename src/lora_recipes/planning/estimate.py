"""Time, memory and dollar estimates for a training run, from a simple documented model.

Throughput model (per GPU):

    FLOPs per trained token  = 4 * N          forward (2N) + backward through frozen weights (2N)
                             + 2 * N          more with gradient checkpointing (forward recomputed)
    FLOPs per validation token = 2 * N
    seconds = FLOPs / (peak dense bf16 FLOP/s * MFU)
            + 4-bit de-quantization: passes * B * 4.5 bytes / memory bandwidth

N is the base model's parameter count; LoRA's own FLOPs are under 1% of it and ignored. MFU
(model FLOPs utilisation) is what the matrix multiplies of QLoRA reach: 0.24 with 4-bit weights,
0.15 with 8-bit, 0.35 with 16-bit. With 4-bit weights every forward pass of a micro-batch first
de-quantizes each layer's weight to 16 bits (bitsandbytes' `dequantize_4bit`, then a 16-bit
matmul): B = N minus the embeddings and LM head, 4.5 bytes moved per parameter (0.5 read packed,
2 written, 2 read by the matmul), once in the forward pass, once in the backward pass and once
more in the recomputed forward pass with gradient checkpointing (validation: once). This cost is
per micro-batch, not per token, so it dominates at batch size 1 with short rows: LLaMA-2-7B on an
A100-80GB spends about 29 ms per training micro-batch de-quantizing, beside about 54 ms of
matmuls for a 150-token row. The 4-bit MFU of 0.24 puts a 512-token micro-batch of LLaMA-2-7B on an
A100 at about 2,400 tokens/s, what HF + PEFT QLoRA is published to reach. Without micro-batch
counts (`Workload.train_micro_batches` 0) the de-quantization term is left out. Treat the result
as a planning figure within a factor of two; `train` reports the real one beside it.

Memory model: 4-bit NF4 weights take 4.127 bits per parameter with double quantization (0.5 bits
of constants without); LoRA parameters cost 16 bytes each (fp32 weight, gradient and two Adam
moments); activations about 34 bytes x tokens x hidden size per layer (Korthikanti et al. 2022,
without the attention matrix that SDPA does not store), or 2 bytes x tokens x hidden per layer
(each layer's saved input) plus one layer's worth with gradient checkpointing; logits and their
gradient in fp32; plus 0.5 GiB of CUDA context. A run fits when that peak is at most FITS_SHARE
(90%) of the GPU's memory as sold. With 4-bit or 8-bit weights,
`prepare_model_for_kbit_training` (peft) upcasts every weight that is not quantized to fp32:

    embeddings, LM head, norms   4 bytes per parameter, not 2 (+0.5 GiB on Mistral-7B, +2 GiB on
                                 Llama-3-8B with its 128k vocabulary)
    residual stream              fp32 as a consequence: the embeddings' output is fp32 and the
                                 4-bit layers return their input's type, so per token and layer
                                 the two norms' inputs (2 x hidden) and the MLP's gate, activation
                                 and up outputs (3 x intermediate) are held at 4 bytes, not 2:
                                 + 2 x (2 x hidden + 3 x intermediate) bytes; with gradient
                                 checkpointing each layer's saved input is 4 bytes per value.

The peak is what the allocator holds (torch.cuda.max_memory_allocated); the caching allocator
reserves more (torch.cuda.max_memory_reserved, what runs out on a small card), which the cost
report records beside it.

An estimate is an architecture and a `Workload` (what the run computes, whatever it runs on)
priced on one GPU: `estimate(arch, workload, gpu, price)`, so pricing another GPU re-prices the
same workload and rebuilds nothing.

GPUs are named by the table's entries. A MIG slice of one is named `<entry> MIG <g>g.<m>gb` (what
`match_gpu` makes of a device name such as 'NVIDIA A100-SXM4-80GB MIG 1g.10gb'): it has g of the
GPU's 7 compute slices, so g/7 of its FLOP/s, memory bandwidth and hourly price, and its own m GiB
of memory. Clouds do not rent MIG slices by the hour; the share of the whole GPU's price is this
table's convention, so a run on a slice is not charged as a whole GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lora_recipes.model.architectures import Architecture

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # as sold ("24 GB"); see FITS_SHARE for what a run can use of it
    peak_tflops: float  # dense bf16 tensor-core FLOP/s (fp16 on T4, which has no bf16)
    price_per_hour_usd: float  # on-demand, one GPU, AWS us-east-1 list prices where AWS offers it
    memory_bandwidth_gbs: float = 0.0  # GB/s of its memory; 0: unknown (no de-quantization term)


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("T4", 16, 65, 0.53, 320),  # g4dn.xlarge
        Gpu("L4", 24, 121, 0.80, 300),  # g6.xlarge
        # The A10G (AWS's variant of the A10, in g5) shares the A10's 600 GB/s but not its tensor
        # throughput: about 70 TFLOPS dense bf16 (140 with sparsity) against the A10's 125; the A10G
        # favours CUDA-core FP32 instead (Baseten, "NVIDIA A10 vs A10G for ML model inference").
        Gpu("A10G", 24, 70, 1.01, 600),  # g5.xlarge
        Gpu("A100-40GB", 40, 312, 4.10, 1555),  # p4d.24xlarge / 8
        Gpu("A100-80GB", 80, 312, 5.12, 2039),  # p4de.24xlarge / 8
        Gpu("H100", 80, 989, 6.88, 3350),  # p5.48xlarge / 8
        Gpu("H200", 141, 989, 7.91, 4800),  # p5en.48xlarge / 8
    )
}

# The share of a GPU's memory as sold that the estimated peak may take. torch can allocate less than
# the nominal figure (decimal gigabytes, the driver's and ECC's reserve: a "16 GB" T4 reports 14.7
# GiB), and what runs out is the allocator's reserved memory, above what tensors hold (the
# estimate's terms, CUDA context included); the cost report records both peaks, so a GPU run can
# check this margin.
FITS_SHARE = 0.9

# Model FLOPs utilisation of the matrix multiplies (4-bit de-quantization is counted apart).
MFU_BY_BITS = {4: 0.24, 8: 0.15, None: 0.35}
# Bytes moved per parameter when bitsandbytes de-quantizes a 4-bit weight for one matmul: the
# packed weight read (0.5), the 16-bit copy written (2) and read by the matmul (2).
DEQUANT_BYTES_PER_PARAM = 4.5

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
    return Gpu(
        gpu,
        int(found.group(2)),
        spec.peak_tflops * share,
        spec.price_per_hour_usd * share,
        spec.memory_bandwidth_gbs * share,
    )


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
    train_micro_batches: int = 0  # forward passes of the run's training, all processes (0: not known)
    validation_micro_batches: int = 0  # forward passes of all its validations


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
    def dequantize_seconds_per_pass(self) -> float:
        """Seconds to de-quantize every 4-bit weight once (0 without 4-bit weights or a known
        memory bandwidth)."""
        bandwidth = gpu_spec(self.gpu).memory_bandwidth_gbs * 1e9
        if self.workload.method.bits != 4 or not bandwidth:
            return 0.0
        quantized = max(self.architecture.total_params - self.architecture.embedding_params, 0)
        return quantized * DEQUANT_BYTES_PER_PARAM / bandwidth

    @property
    def train_seconds(self) -> float:
        """Seconds of the training steps: their FLOPs, and de-quantization per micro-batch."""
        w, rate = self.workload, self.flops_per_second
        passes = 3 if w.method.gradient_checkpointing else 2  # forward, backward (, recomputed forward)
        compute = self.flops_per_train_token * w.train_tokens / rate if rate else 0.0
        return compute + w.train_micro_batches * passes * self.dequantize_seconds_per_pass

    @property
    def validation_seconds(self) -> float:
        w, rate = self.workload, self.flops_per_second
        compute = 2 * self.architecture.total_params * w.validation_tokens / rate if rate else 0.0
        return compute + w.validation_micro_batches * self.dequantize_seconds_per_pass

    @property
    def tokens_per_second(self) -> float:
        """Computed training tokens per second of training steps on one GPU."""
        if self.workload.train_tokens and self.train_seconds:
            return self.workload.train_tokens / self.train_seconds
        per_token = self.flops_per_train_token
        return self.flops_per_second / per_token if per_token else 0.0

    @property
    def hours(self) -> float:
        return (self.train_seconds + self.validation_seconds) / 3600

    @property
    def cost_usd(self) -> float:
        return self.hours * self.price_per_hour_usd

    @property
    def peak_memory_bytes(self) -> int:
        return peak_memory(self.architecture, self.workload)

    @property
    def fits_in_memory(self) -> bool:
        return self.peak_memory_bytes <= FITS_SHARE * gpu_spec(self.gpu).memory_gib * GIB

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


def memory_terms(arch: Architecture, workload: Workload) -> dict[str, int]:
    """The peak's parts, in bytes (the memory model in the module notes): `weights` as loaded,
    `upcast` what prepare_model_for_kbit_training adds by casting the unquantized weights to fp32,
    `adapter` the trainable parameters with their gradients and Adam moments, `activations` at
    16 bits, `fp32_stream` what the fp32 residual stream adds to them, `logits`, `cuda_context`."""
    method = workload.method
    total, trainable, tokens = arch.total_params, workload.trainable_params, workload.tokens_per_batch
    h, layers = arch.hidden_size, arch.num_layers
    upcast = method.bits is not None  # prepare_model_for_kbit_training: every unquantized weight to fp32
    norms = (2 * layers + 1) * h
    body = max(total - arch.embedding_params - norms, 0)
    if method.bits == 4:
        bits_per_param = 4.127 if method.double_quant else 4.5
    elif method.bits == 8:
        bits_per_param = 8.0
    else:
        bits_per_param = 16.0
    unquantized = arch.embedding_params + norms
    weights = body * bits_per_param / 8 + unquantized * 2
    if trainable >= total:  # full fine-tuning: 16-bit weights + fp32 grads and moments
        weights, adapter = total * 2, total * 12
    else:
        adapter = trainable * 16
    # per token and layer: the norms' inputs and the MLP's gate, activation and up outputs in fp32
    stream_per_layer = 2 * (2 * h + 3 * arch.intermediate_size) if upcast else 0
    if method.gradient_checkpointing:  # each layer's saved input, plus one layer recomputed at a time
        activations = tokens * h * (2 * layers + 34)
        stream = tokens * (h * 2 * layers + stream_per_layer) if upcast else 0
    else:
        activations = tokens * h * 34 * layers
        stream = tokens * stream_per_layer * layers
    return {
        "weights": int(weights),
        "upcast": unquantized * 2 if upcast else 0,
        "adapter": int(adapter),
        "activations": int(activations),
        "fp32_stream": int(stream),
        "logits": tokens * arch.vocab_size * 4 * 2,  # fp32 logits and their gradient
        "cuda_context": int(0.5 * GIB),
    }


def peak_memory(arch: Architecture, workload: Workload) -> int:
    """Peak allocated bytes of training on one GPU: the sum of `memory_terms`."""
    return sum(memory_terms(arch, workload).values())
