"""Time, memory and dollar estimates for a training plan, from a simple documented model.

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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


def gpu_price(gpu: str, override: float | None) -> float:
    return override if override is not None else GPUS[gpu].price_per_hour_usd


def match_gpu(device_name: str) -> str | None:
    """The table entry for a CUDA device name such as 'NVIDIA A100-SXM4-80GB', if any."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100"
    if "A100" in name:
        return "A100-80GB" if "80G" in name else "A100-40GB"
    for short in ("A10G", "L4", "T4"):
        if short in name:
            return short
    return None


@dataclass(frozen=True)
class Estimate:
    gpu: str
    price_per_hour_usd: float
    train_tokens: int
    validation_tokens: int
    flops: float
    tokens_per_second: float
    hours: float
    cost_usd: float
    peak_memory_bytes: int
    fits_in_memory: bool
    basis: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def estimate(
    *,
    total_params: int,
    trainable_params: int,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    embedding_params: int,
    bits: int | None,
    double_quant: bool,
    gradient_checkpointing: bool,
    train_tokens: int,
    validation_tokens: int,
    batch_size: int,
    max_length: int,
    gpu: str,
    price_per_hour_usd: float | None,
    basis: str,
) -> Estimate:
    """Estimate one training run. `train_tokens` counts every computed token, padding included."""
    spec = GPUS[gpu]
    mfu = MFU_BY_BITS[bits]
    per_train_token = (6 if gradient_checkpointing else 4) * total_params
    flops = per_train_token * train_tokens + 2 * total_params * validation_tokens
    rate = spec.peak_tflops * 1e12 * mfu
    seconds = flops / rate if rate else 0.0
    price = gpu_price(gpu, price_per_hour_usd)
    hours = seconds / 3600
    memory = peak_memory(
        total_params=total_params,
        trainable_params=trainable_params,
        hidden_size=hidden_size,
        num_layers=num_layers,
        vocab_size=vocab_size,
        embedding_params=embedding_params,
        bits=bits,
        double_quant=double_quant,
        gradient_checkpointing=gradient_checkpointing,
        tokens_per_batch=batch_size * max_length,
    )
    return Estimate(
        gpu=gpu,
        price_per_hour_usd=price,
        train_tokens=train_tokens,
        validation_tokens=validation_tokens,
        flops=flops,
        tokens_per_second=rate / per_train_token if per_train_token else 0.0,
        hours=hours,
        cost_usd=hours * price,
        peak_memory_bytes=memory,
        fits_in_memory=memory <= spec.memory_gib * GIB,
        basis=basis,
    )


def peak_memory(
    *,
    total_params: int,
    trainable_params: int,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    embedding_params: int,
    bits: int | None,
    double_quant: bool,
    gradient_checkpointing: bool,
    tokens_per_batch: int,
) -> int:
    body = max(total_params - embedding_params, 0)
    if bits == 4:
        bits_per_param = 4.127 if double_quant else 4.5
    elif bits == 8:
        bits_per_param = 8.0
    else:
        bits_per_param = 16.0
    weights = body * bits_per_param / 8 + embedding_params * 2
    if trainable_params >= total_params:  # full fine-tuning: 16-bit weights + fp32 grads and moments
        weights = total_params * 2
        adapter = total_params * 12
    else:
        adapter = trainable_params * 16
    if gradient_checkpointing:
        activations = tokens_per_batch * hidden_size * (2 * num_layers + 34)
    else:
        activations = tokens_per_batch * hidden_size * 34 * num_layers
    logits = tokens_per_batch * vocab_size * 4 * 2
    return int(weights + adapter + activations + logits + 0.5 * GIB)
