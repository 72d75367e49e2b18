"""QLoRA on the Mistral-7B architecture with random weights, on one CUDA GPU: useful tokens/s and
peak VRAM of `lora-recipes train` beside the plain Hugging Face way (Trainer + PEFT + a collator
that pads each batch, random order).

Nothing is downloaded: the model is built from Mistral-7B-v0.1's public configuration with random
bfloat16 weights directly on the GPU, saved once as a normal model folder, and loaded back by both
sides through lora_recipes.model.loading.load_base_model (4-bit NF4, double quantization, bfloat16
compute: the real QLoRA path). The rows are synthetic token ids with a long-tailed length (median
about 150 tokens, cut at 600) and a short answer, like LoRA Land's classification tasks.

    python scripts/bench_gpu.py [--steps 20] [--warmup 2] [--batch-size 8] [--layers 32]
    python scripts/bench_gpu.py --device cpu --tiny --steps 2 --warmup 0 --rows 32 --max-length 64
        # the same code path on a CPU with a Mistral of toy width, in seconds (the test suite's smoke run)

Needs torch with CUDA, bitsandbytes with its CUDA kernels, transformers, peft and accelerate, and
about 30 GB of free disk for the 14.5 GB model folder (--workdir, reusable: the model is built once
and both sides train into folders they empty first). Building it takes every weight in bfloat16 on
the GPU at once (2 bytes a parameter, 14.5 GB at 32 layers, plus about 1 GiB beside them): a GPU
with less memory than that (a 16 GB T4 at 32 layers) is refused before building (exit code 2). Both sides' step clocks wait for the GPU
(torch.cuda.synchronize) at the end of every optimizer step before reading the time. Beside each
side's peak memory, allocated (torch.cuda.max_memory_allocated) and reserved
(torch.cuda.max_memory_reserved), and its tokens/s, the table shows what lora-recipes' estimate
(planning/estimate.py) predicts for the same shape, batch and GPU. Prints a table and writes JSON
(--output; default bench-results/bench_gpu.json, or $OUT/bench_gpu.json when OUT is set).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train's Hugging Face baseline
if importlib.util.find_spec("lora_recipes") is None:  # a bare checkout on a lent GPU machine
    sys.path.insert(0, str(ROOT / "src"))

# Mistral-7B-v0.1's config.json (public): the shape the benchmark trains.
MISTRAL_7B: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# --tiny: the same architecture at toy width, for a smoke run of this script on a CPU.
TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
PAD_ID = 3  # <pad> of the tokenizer make_tokenizer trains
BUILD_OVERHEAD_BYTES = 2**30  # beside the weights while building: CUDA context, allocator rounding
MEMORY_SHARE = 0.95  # of the GPU's memory that building may take


def model_shape(args: argparse.Namespace) -> dict[str, Any]:
    return {**MISTRAL_7B, **(TINY if args.tiny else {}), "num_hidden_layers": args.layers}


def model_folder(workdir: Path, layers: int, tiny: bool = False) -> Path:
    """Where the random model of `layers` layers is built (and found again) in `workdir`."""
    return workdir / f"mistral-7b-random-{layers}l{'-tiny' if tiny else ''}"


def build_memory(shape: dict[str, Any]) -> int:
    """Bytes of GPU memory building the random model takes: every weight in bfloat16 at once (it is
    made whole on the GPU, before any quantization), plus BUILD_OVERHEAD_BYTES."""
    from lora_recipes.model.architectures import from_config

    arch = from_config(shape, "bench")
    assert arch is not None
    return 2 * arch.total_params + BUILD_OVERHEAD_BYTES


def build_random_model(folder: Path, shape: dict[str, Any], device: str = "cuda") -> None:
    """Random bf16 Mistral weights made on `device` and saved as a model folder, with a small
    tokenizer (the rows are token ids already; training only needs its pad and EOS ids)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    from lora_recipes.model.tiny import make_tokenizer

    config = MistralConfig(**shape, pad_token_id=PAD_ID)
    torch.manual_seed(0)
    with torch.device(device):
        model = MistralForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    make_tokenizer(folder / "tokenizer", ["benchmark rows are token ids"], vocab_size=300)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    tokenizer.save_pretrained(folder)
    shutil.rmtree(folder / "tokenizer")


def synthetic_rows(rows: int, max_length: int, vocab_size: int, seed: int = 0) -> Any:
    """Prompt + answer + EOS token ids; log-normal prompt lengths (long tail), 1-8 answer tokens."""
    from lora_recipes.data.types import PreparedData, TokenizedSplit

    rng = random.Random(seed)
    ids, prompts = [], []
    for _ in range(rows):
        answer = rng.randint(1, 8)
        prompt = min(max(int(rng.lognormvariate(math.log(150), 0.8)), 8), max_length - answer - 1)
        ids.append([rng.randrange(3, vocab_size) for _ in range(prompt + answer)] + [2])
        prompts.append(prompt)
    split = TokenizedSplit("train", ids, prompts, list(range(rows)))
    return PreparedData(split, None, max_length, {"train": f"synthetic-{rows}-{max_length}-{seed}"}, {})


def write_recipe(path: Path, model_dir: Path, args: argparse.Namespace) -> Path:
    import yaml

    recipe = {
        "version": 1,
        "name": "mistral-7b-random",
        "base_model": str(model_dir),
        "prompt": {"template": "{text}"},
        "output": {"column": "label"},
        "data": {"dataset": str(model_dir)},  # not read: the benchmark hands over token ids
        "trainer": {
            "train_steps": args.steps,
            "batch_size": args.batch_size,
            "gradient_accumulation_steps": 1,
            "device": args.device,
            "enable_gradient_checkpointing": args.gradient_checkpointing,
        },
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def measured(name: str, run: Any, warmup: int, device: str = "cuda") -> dict[str, Any]:
    """Run one configuration with a fresh peak-memory counter (GPU only); free its model afterwards."""
    import torch

    from bench_train import summarize

    cuda = device == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    steps = run()
    result = summarize(steps, skip=warmup)
    result["peak_vram_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved() if cuda else None
    result["wall_seconds"] = time.perf_counter() - start
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    print(f"{name}: done in {result['wall_seconds']:.0f} s", file=sys.stderr)
    return result


def estimated(
    shape: dict[str, Any], args: argparse.Namespace, device_name: str, result: dict[str, Any]
) -> dict[str, Any]:
    """What planning/estimate.py predicts for one side's measured run: peak memory (any GPU) and,
    on a GPU of the price table, computed tokens/s over the timed steps (one micro-batch a step)."""
    from lora_recipes.model.architectures import from_config, lora_trainable_params
    from lora_recipes.planning.estimate import Method, Workload, estimate, match_gpu

    arch = from_config(shape, "bench")
    assert arch is not None
    workload = Workload(
        Method(bits=4, double_quant=True, gradient_checkpointing=args.gradient_checkpointing),
        trainable_params=lora_trainable_params(arch, ("q_proj", "v_proj"), 8),
        train_tokens=result["computed_tokens"],
        validation_tokens=0,
        tokens_per_batch=args.batch_size * args.max_length,
        basis="bench_gpu synthetic rows",
        train_micro_batches=result["timed_steps"],
    )
    gpu = match_gpu(device_name) if args.device == "cuda" else None
    est = estimate(arch, workload, gpu or "A100-80GB", None)  # peak memory does not depend on the GPU
    out: dict[str, Any] = {"gpu": gpu, "peak_memory_bytes": est.peak_memory_bytes, "tokens_per_second": None}
    if gpu is not None:
        out["tokens_per_second"] = est.tokens_per_second
        measured_rate = result["computed_tokens_per_second"]
        out["tokens_per_second_error_percent"] = round(100 * (measured_rate / est.tokens_per_second - 1), 1)
    if result.get("peak_vram_bytes"):
        out["peak_memory_error_percent"] = round(100 * (result["peak_vram_bytes"] / est.peak_memory_bytes - 1), 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per configuration (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    parser.add_argument("--rows", type=int, default=2000, help="synthetic training rows (default 2000)")
    parser.add_argument("--max-length", type=int, default=600, help="longest row in tokens (default 600)")
    parser.add_argument(
        "--layers", type=int, default=32, help="decoder layers (32 = Mistral-7B; fewer for a smoke run)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="both sides recompute activations")
    parser.add_argument("--workdir", type=Path, default=None, help="where the random model folder is written")
    parser.add_argument("--output", "--json", type=Path, default=None, help="JSON results file")
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: run the code path without a GPU (with --tiny)"
    )
    parser.add_argument("--tiny", action="store_true", help="toy width (hidden 64) instead of Mistral-7B's 4096")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "skipped: no CUDA GPU is visible (this benchmark is for GPU machines; --device cpu --tiny runs it anyway)"
        )
        return 0
    os.environ.setdefault("LORA_RECIPES_CACHE", str(Path(tempfile.gettempdir()) / "lora-recipes-bench-cache"))
    from bench_train import hf_trainer, ours
    from lora_recipes.model import loading as models
    from lora_recipes.model.source import recipe_model_source
    from lora_recipes.recipe.loader import load_recipe

    models.quiet_transformers()
    shape = model_shape(args)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = model_folder(work, args.layers, args.tiny)
    started = time.perf_counter()
    if not (model_dir / "config.json").is_file():
        if args.device == "cuda":
            need, memory = build_memory(shape), torch.cuda.get_device_properties(0).total_memory
            if need > MEMORY_SHARE * memory:
                print(
                    f"building the random model ({args.layers} layers) in bfloat16 on the GPU needs about "
                    f"{need / 2**30:.1f} GiB, more than {MEMORY_SHARE:.0%} of this GPU's {memory / 2**30:.1f} GiB; "
                    "use fewer --layers or a GPU with more memory",
                    file=sys.stderr,
                )
                return 2
        build_random_model(model_dir, shape, args.device)
    print(f"random model ready in {time.perf_counter() - started:.0f} s: {model_dir}", file=sys.stderr)
    loaded = load_recipe(write_recipe(work / "recipe.yaml", model_dir, args))
    data = synthetic_rows(args.rows, args.max_length, shape["vocab_size"])
    tokenizer = models.load_tokenizer(recipe_model_source(loaded))

    results = {
        "hf-trainer": measured(
            "hf-trainer",
            lambda: hf_trainer(loaded, data, tokenizer, grouped=False, workdir=work / "hf", device=args.device),
            args.warmup,
            args.device,
        ),
        "lora-recipes": measured(
            "lora-recipes",
            lambda: ours(loaded, work / "ours", build_data=lambda _l, _t: data),
            args.warmup,
            args.device,
        ),
    }
    base = results["hf-trainer"]["useful_tokens_per_second"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    for r in results.values():
        r["ratio_vs_hf_trainer"] = r["useful_tokens_per_second"] / base if base else None
        r["estimate"] = estimated(shape, args, device, r)

    def gib(value: float | None) -> str:
        return f"{value / 2**30:>7.2f} G" if value is not None else f"{'-':>9}"

    width = "toy width" if args.tiny else "Mistral-7B width"
    print(
        f"\nQLoRA, Mistral-7B architecture ({args.layers} layers, {width}, random weights), batch size "
        f"{args.batch_size}, {device}"
    )
    print(
        f"{'configuration':<14} {'useful tok/s':>12} {'computed tok/s':>15} {'est. tok/s':>10} {'padding':>8} "
        f"{'peak VRAM':>9} {'reserved':>9} {'estimate':>9} {'ratio':>6}"
    )
    for name, r in results.items():
        est = r["estimate"]
        rate = f"{est['tokens_per_second']:>10,.0f}" if est["tokens_per_second"] is not None else f"{'-':>10}"
        print(
            f"{name:<14} {r['useful_tokens_per_second']:>12,.0f} {r['computed_tokens_per_second']:>15,.0f} {rate} "
            f"{100 * r['padding_share']:>7.1f}% {gib(r['peak_vram_bytes'])} {gib(r['peak_reserved_bytes'])} "
            f"{gib(est['peak_memory_bytes'])} {r['ratio_vs_hf_trainer']:>5.2f}x"
        )
    record = {
        "benchmark": "bench_gpu",
        "device": device,
        "torch": torch.__version__,
        "shape": shape,
        "layers": args.layers,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "batch_size": args.batch_size,
        "rows": args.rows,
        "max_length": args.max_length,
        "gradient_checkpointing": args.gradient_checkpointing,
        "results": results,
        "baseline": "hf-trainer",
        "ratio": results["lora-recipes"]["ratio_vs_hf_trainer"],
    }
    output = args.output or (
        Path(os.environ["OUT"]) / "bench_gpu.json"
        if os.environ.get("OUT")
        else ROOT / "bench-results" / "bench_gpu.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
