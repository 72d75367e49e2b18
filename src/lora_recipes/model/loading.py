"""Build tokenizers and models: the one module that imports transformers, peft and bitsandbytes.

Builders take flat arguments, not the recipe, so tests, benchmarks and the evaluator can call them
directly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lora_recipes.atomic import staging_dir, widen_to_umask, write_text_atomic
from lora_recipes.errors import RuntimeFailure, UserError
from lora_recipes.model.source import BaseIdentity, ModelSource, describe_base
from lora_recipes.notices import quiet_known_notices
from lora_recipes.paths import cache_root

quiet_known_notices()  # before bitsandbytes is first imported (inside the functions below)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> str:
    """auto -> cuda when available, else cpu. Asking for cuda without one is the user's mistake."""
    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise UserError("trainer.device is cuda but no CUDA GPU is visible (set trainer.device: auto or cpu)")
    return "cpu"


Capability = tuple[int, int]  # a CUDA device's compute capability: (7, 5) is a T4, (8, 0) an A100
BF16_CAPABILITY: Capability = (8, 0)  # Ampere and later have bfloat16 tensor cores


@dataclass(frozen=True)
class Precision:
    """How a run holds and computes numbers on its device (see `resolve_precision`)."""

    weights: str  # the data type the unquantized weights are loaded in: float32, bfloat16 or float16
    compute: str  # the data type 4-bit weights are de-quantized to for each matrix multiply
    mixed_precision: str  # accelerate's autocast: bf16, fp16 (with a GradScaler's loss scaling) or no
    notes: tuple[str, ...] = ()  # what was changed from the recipe's settings, and why

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.weights]


def resolve_precision(
    dtype: str,
    compute_dtype: str,
    *,
    device_type: str,
    capability: Capability | None,
    full: bool = False,
    bits: int | None = 4,
    cpu_bf16: bool | None = None,
) -> Precision:
    """The weights' data type, the 4-bit compute type and the mixed precision of a run, from the
    recipe's `model_parameters.dtype` and `quantization.bnb_4bit_compute_dtype`, the device type and,
    on CUDA, the device's compute capability (None: not known, taken as a current GPU).

    - `auto` weights: float32 on a CPU; on CUDA bfloat16 from compute capability 8.0 (Ampere) on,
      float16 below it (T4 7.5, V100 7.0). The capability decides, not
      `torch.cuda.is_bf16_supported()`, which since torch 2.3 says yes below 8.0 too (it counts
      emulation unless `including_emulation=False`), so training would run in slow emulated bf16
      and never take the float16 + GradScaler path.
    - On CUDA below 8.0, bfloat16 asked for (weights, or with `bits` 4 the compute type, whose
      default is bfloat16) becomes float16, with a note.
    - Mixed precision on CUDA follows the 16-bit type: bf16, or fp16 with loss scaling; none with
      float32 weights, and none on a CPU.
    - Full fine-tuning in float16: a GradScaler cannot unscale float16 gradients ("Attempting to
      unscale FP16 gradients"), so the weights are loaded in float32 (the optimizer's master
      copy) and the forward pass runs in float16 autocast.
    - On a CPU without bfloat16 instructions (AVX512-BF16 or AMX; `cpu_bf16`, read from this CPU
      when None), bfloat16 becomes float32, with a note: there bfloat16 is emulated. On a 2-core
      AVX2 EPYC an 864x576 by 576x576 product took 25x as long in bfloat16 as in float32, and
      4-bit SmolLM2 trained SST-2 at 7 tokens/s with bfloat16 compute against 164 with float32.
    """
    notes: list[str] = []
    if device_type == "cpu" and not (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16):
        return _without_cpu_bf16(dtype, compute_dtype, bits)
    cuda = device_type == "cuda"
    old_gpu = cuda and capability is not None and tuple(capability) < BF16_CAPABILITY
    where = f"this GPU (compute capability {capability[0]}.{capability[1]})" if old_gpu and capability else ""
    weights = dtype
    if dtype == "auto":
        weights = ("float16" if old_gpu else "bfloat16") if cuda else "float32"
    elif dtype == "bfloat16" and old_gpu:
        weights = "float16"
        notes.append(f"model_parameters.dtype: {where} has no bfloat16 tensor cores; using float16")
    compute = compute_dtype
    if compute_dtype == "bfloat16" and old_gpu:
        compute = "float16"
        if bits == 4:
            notes.append(
                f"quantization.bnb_4bit_compute_dtype: {where} has no bfloat16 tensor cores (bfloat16 would "
                "be emulated); using float16"
            )
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(weights, "no") if cuda else "no"
    if full and weights == "float16" and mixed == "fp16":
        weights = "float32"
        notes.append(
            "full fine-tuning in float16: the weights are kept in float32 and the forward pass runs in float16 "
            "autocast (loss scaling cannot unscale float16 gradients)"
        )
    return Precision(weights, compute, mixed, tuple(notes))


def _without_cpu_bf16(dtype: str, compute_dtype: str, bits: int | None) -> Precision:
    """`resolve_precision` on a CPU that emulates bfloat16: float32 wherever bfloat16 was asked for."""
    notes = []
    weights = "float32" if dtype in ("auto", "bfloat16") else dtype
    if dtype == "bfloat16":
        notes.append(f"model_parameters.dtype: {_NO_CPU_BF16}")
    compute = "float32" if compute_dtype == "bfloat16" else compute_dtype
    if compute_dtype == "bfloat16" and bits == 4:
        notes.append(f"quantization.bnb_4bit_compute_dtype: {_NO_CPU_BF16}")
    return Precision(weights, compute, "no", tuple(notes))


_NO_CPU_BF16 = (
    "this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so bfloat16 would be emulated; using float32"
)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def device_capability(device: str = "cuda") -> Capability | None:
    """The compute capability of a CUDA device (cuda or cuda:N), None without CUDA."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return (int(major), int(minor))


def resolve_dtype(setting: str, device: str, capability: Capability | None = None) -> torch.dtype:
    """The weights' data type of `resolve_precision` (auto: bfloat16 on GPUs with bfloat16 tensor
    cores, float16 on older GPUs, float32 on CPU); the capability is read from the GPU unless given."""
    if device == "cuda" and capability is None:
        capability = device_capability()
    return resolve_precision(setting, "float32", device_type=device, capability=capability).dtype


def _hub_error(what: str, location: str, exc: Exception) -> UserError:
    return UserError(
        f"cannot load the {what} of {location!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
        "If the Hugging Face hub is unreachable, point base_model at a local folder (or a package: file), "
        "or set HF_HUB_OFFLINE=1 to use models already in the local hub cache"
    )


def materialize(source: ModelSource, *, revision: str | None = None) -> str:
    """A path or hub id that `from_pretrained` loads without a `gguf_file`.

    GGUF weights are de-quantized and saved once as a safetensors folder under the cache (the
    first load takes 20-30 s; later ones about a second). The cache key covers the file's path,
    size and modification time, so a changed file is converted again. The folder and its files get
    the modes the umask allows, so other users of a shared cache can read them.
    """
    if not source.gguf_file:
        return source.location
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.kind == "local":
        gguf = Path(source.location) / source.gguf_file
        if not gguf.is_file():
            raise UserError(f"base_model: {gguf} does not exist")
        stat = gguf.stat()
        key_text = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        key_text = f"hub:{source.location}:{source.gguf_file}:{revision}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{Path(source.gguf_file).stem}-{key}"
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, "converting")
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file, revision=revision)
            model = AutoModelForCausalLM.from_pretrained(
                source.location, gguf_file=source.gguf_file, revision=revision, dtype=torch.bfloat16
            )
        except OSError as exc:
            raise _hub_error("GGUF model", source.describe(), exc) from None
        # The weights are plain tensors once de-quantized; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        del model
        widen_to_umask(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def load_tokenizer(source: ModelSource, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The base model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    location = materialize(source, revision=revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, revision=None if source.gguf_file else revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _hub_error("tokenizer", source.describe(), exc) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {source.describe()} has no EOS token, which training needs")
    return tokenizer


def disable_cpu_inference_repack(model: torch.nn.Module) -> int:
    """Keep bitsandbytes' 4-bit layers trainable on CPUs with AVX512-BF16.

    bitsandbytes >= 0.49 repacks a `Linear4bit` weight into an inference-only layout on its first
    forward pass in eval mode without gradients; from then on no gradient flows through that layer
    (training silently stops after the first validation). Turning the fast path off avoids the
    repack. Returns how many layers were changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def quantization_config(
    *, bits: int | None, quant_type: str, double_quant: bool, compute_dtype: str, int8_threshold: float
) -> Any:
    if bits is None:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=DTYPES[compute_dtype],
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=int8_threshold)


def load_base_model(
    source: ModelSource,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    bits: int | None = None,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "bfloat16",
    int8_threshold: float = 6.0,
    hub_id: str | None = None,
    device: str = "cpu",
    full: bool = False,
    exact_dtype: bool = False,
) -> Any:
    """Load the frozen base model, quantized when `bits` is 4 or 8, on `device` (cpu, cuda or
    cuda:N), in the data types `resolve_precision` gives for this device (`full`: every weight
    will be trained; `exact_dtype`: `dtype` as given on any CPU, for a model that is saved). The
    model carries its `BaseIdentity` (see `base_identity`; `hub_id` names the hub model a GGUF or
    local base was made from), which `save_trained` writes into the adapter."""
    from transformers import AutoModelForCausalLM

    location = materialize(source, revision=revision)
    device_type = device.split(":")[0]
    if bits is not None and device_type == "cpu":
        _check_bitsandbytes_cpu(bits)
    capability = device_capability(device)
    # exact_dtype: the weights are what is wanted (an export), not a speed choice: no CPU fallback.
    cpu_bf16 = True if exact_dtype else None
    precision = resolve_precision(
        dtype, compute_dtype, device_type=device_type, capability=capability, full=full, bits=bits, cpu_bf16=cpu_bf16
    )
    qconfig = quantization_config(
        bits=bits,
        quant_type=quant_type,
        double_quant=double_quant,
        compute_dtype=precision.compute,
        int8_threshold=int8_threshold,
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location,
            revision=None if source.gguf_file else revision,
            trust_remote_code=trust_remote_code,
            dtype=precision.dtype,
            quantization_config=qconfig,
            device_map={"": device},
        )
    except OSError as exc:
        raise _hub_error("weights", source.describe(), exc) from None
    except torch.OutOfMemoryError as exc:
        raise RuntimeFailure(
            f"out of memory loading {source.describe()}: use quantization.bits: 4, or a larger GPU"
        ) from exc
    disable_cpu_inference_repack(model)
    identity = describe_base(
        source, revision=revision, hub_id=hub_id, commit=getattr(model.config, "_commit_hash", None)
    )
    model.__dict__[_IDENTITY_ATTRIBUTE] = identity
    return model


_IDENTITY_ATTRIBUTE = "lora_recipes_base"


def base_identity(model: Any) -> BaseIdentity | None:
    """The `BaseIdentity` that `load_base_model` gave a model, looked for through peft's and
    accelerate's wrappers; None for a model loaded some other way."""
    seen = 0
    while model is not None and seen < 8:
        found = getattr(model, "__dict__", {}).get(_IDENTITY_ATTRIBUTE)
        if isinstance(found, BaseIdentity):
            return found
        # peft's PeftModel, then DistributedDataParallel and friends
        inner = model.get_base_model() if hasattr(model, "get_base_model") else getattr(model, "module", None)
        model = inner if inner is not model else None
        seen += 1
    return None


def _check_bitsandbytes_cpu(bits: int) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise UserError(f"quantization.bits: {bits} needs bitsandbytes (pip install 'bitsandbytes>=0.45')") from exc


def prepare_for_training(model: Any, *, quantized: bool, gradient_checkpointing: bool) -> Any:
    """k-bit preparation (fp32 norms, input gradients) and optional gradient checkpointing."""
    if quantized:
        from peft import prepare_model_for_kbit_training

        # Non-reentrant checkpointing works under DistributedDataParallel; the reentrant kind
        # marks LoRA parameters ready twice there.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if gradient_checkpointing:
        model.config.use_cache = False
    return model


def attach_lora(model: Any, *, r: int, alpha: float, dropout: float, target_modules: tuple[str, ...], bias: str) -> Any:
    """Wrap `model` with fresh LoRA adapters (peft); only they require gradients afterwards."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = "all-linear" if "all-linear" in target_modules else list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft accepts any number
        lora_dropout=dropout,
        target_modules=targets,
        bias=bias,  # type: ignore[arg-type]
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(f"adapter.target_modules: {exc} (linear modules of this model: {', '.join(names)})") from None


def load_adapter(model: Any, adapter_dir: str | Path, *, trainable: bool = False) -> Any:
    """Attach a saved PEFT adapter to a base model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


@dataclass(frozen=True)
class ModelSummary:
    total_params: int
    trainable_params: int
    memory_bytes: int

    def describe(self) -> str:
        share = 100 * self.trainable_params / self.total_params if self.total_params else 0
        return (
            f"{self.total_params:,} parameters, {self.trainable_params:,} trainable ({share:.2f}%), "
            f"{self.memory_bytes / 2**20:,.1f} MiB of weights"
        )


def summarize(model: torch.nn.Module) -> ModelSummary:
    """Parameter counts (4-bit weights counted as their logical size) and weight memory."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        # bitsandbytes packs two 4-bit values per uint8 element.
        if p.dtype == torch.uint8 and hasattr(p, "quant_state"):
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    memory = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return ModelSummary(total, trainable, memory)


def quiet_transformers() -> None:
    """Silence transformers' per-file progress bars and advisory warnings during a training run;
    training prints its own account of what was loaded."""
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


def supports_logits_mask(model: Any) -> bool:
    """Whether the causal-LM class takes a boolean (batch, sequence) `logits_to_keep` mask, so the
    LM head runs only where a loss is computed (the answer tokens) instead of on every position."""
    import sys

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module is not None and hasattr(module, "slice_logits_to_keep")


def save_trained(
    model: Any, tokenizer: Any, folder: str | Path, *, full: bool, base: BaseIdentity | None = None
) -> BaseIdentity | None:
    """Write what training produced into `folder`: a PEFT adapter (adapter_config.json and
    adapter_model.safetensors, which peft, vLLM and LoRAX load), or for full fine-tuning the
    whole model with its tokenizer, a folder usable as a `base_model`.

    The adapter's `base_model_name_or_path` is the base's portable id (`portable_base_id`: a hub
    id, never a path on this machine) and its `revision` the hub commit where known. `base`
    defaults to what `load_base_model` attached to the model. Returns the `BaseIdentity` used
    (None when the model carries none), for the run's manifest."""
    folder = Path(folder)
    base = base or base_identity(model)
    if full:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        return base
    # Hand peft the trainable tensors rather than letting it call model.state_dict(): that would
    # serialise every frozen 4-bit weight only to drop it (and bitsandbytes unpacks CPU-repacked
    # weights while doing so).
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    model.save_pretrained(folder, safe_serialization=True, state_dict=trainable)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    if base is not None:
        set_adapter_base(folder, base)
    return base


def set_adapter_base(folder: Path, base: BaseIdentity) -> None:
    """Point a saved adapter's adapter_config.json at `base`'s portable id (and its revision),
    rewriting the file atomically in peft's own layout."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base.id
    config["revision"] = base.id_revision
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True))


# bitsandbytes pages an optimizer state tensor (CUDA unified memory, moved to the CPU when the GPU
# runs short) only when it has at least this many elements (`Optimizer8bit.get_state_buffer`:
# `p.numel() < 1e5` gets a plain GPU tensor). LoRA r=8 on q_proj and v_proj of a 7B model has
# tensors of 8 x 4096 = 32,768 elements at most: nothing is paged.
PAGED_MIN_ELEMENTS = 100_000


def build_optimizer(
    params: list[torch.nn.Parameter], *, type: str, lr: float, betas: tuple[float, ...], eps: float, weight_decay: float
) -> torch.optim.Optimizer:
    """adamw, adam or sgd from torch; paged_adamw_8bit and paged_adamw_32bit from bitsandbytes
    (CUDA only; tensors below PAGED_MIN_ELEMENTS elements are not paged)."""
    b1, b2 = betas
    if type == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    if type == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    if type == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if type in ("paged_adamw_8bit", "paged_adamw_32bit"):
        if not any(p.is_cuda for p in params):
            raise UserError(f"trainer.optimizer.type: {type} needs a CUDA GPU (use adamw on the CPU)")
        import bitsandbytes as bnb

        paged = bnb.optim.PagedAdamW8bit if type == "paged_adamw_8bit" else bnb.optim.PagedAdamW32bit
        optimizer: torch.optim.Optimizer = paged(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
        return optimizer
    raise UserError(f"trainer.optimizer.type: unknown optimizer {type!r}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)`, keeping a bitsandbytes paged optimizer paged: its
    load_state_dict puts every state tensor on its parameter's device as an ordinary tensor, so a
    resumed run would hold in GPU memory what the uninterrupted run paged out to the CPU. Each
    state buffer that `get_state_buffer` would page is copied into a new paged one."""
    optimizer.load_state_dict(state)
    inner: Any = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    if not getattr(inner, "is_paged", False):
        return
    for group in inner.param_groups:
        for p in group["params"]:
            entry = inner.state.get(p, {})
            for key in ("state1", "state2"):
                value = entry.get(key)
                if isinstance(value, torch.Tensor) and not getattr(value, "is_paged", False):
                    buffer = inner.get_state_buffer(p, dtype=value.dtype)  # paged where bitsandbytes pages
                    buffer.copy_(value.reshape(buffer.shape))
                    entry[key] = buffer


def paged_state_share(params: list[torch.nn.Parameter]) -> float:
    """The share of the trainable elements a bitsandbytes paged optimizer would page (those in
    tensors of at least PAGED_MIN_ELEMENTS elements); 0.0 means paging changes nothing."""
    total = sum(p.numel() for p in params)
    paged = sum(p.numel() for p in params if p.numel() >= PAGED_MIN_ELEMENTS)
    return paged / total if total else 0.0
