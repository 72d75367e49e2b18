"""Benchmark: `lora-recipes validate` on 30 recipes in a fresh process, beside the import floor.

Measured in the same run, so machine noise cancels in the ratios:
  - `python -c pass`                                  bare interpreter start
  - `python -c "import yaml, jsonschema, typer"`      the floor: what validate must import anyway
  - `python -m lora_recipes validate <30 recipes>`    the real command

Goal: validate at most 2x the import floor. Prints a table and writes JSON (--json PATH).

    python scripts/bench_validate.py               # median of 9 runs of each
    python scripts/bench_validate.py --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def thirty_recipes(folder: Path) -> list[str]:
    """The shipped recipes, repeated under new names until there are 30."""
    shipped = sorted(p for p in (ROOT / "recipes").glob("*.yaml"))
    paths = []
    for i in range(30):
        source = shipped[i % len(shipped)]
        target = folder / f"{i:02d}-{source.name}"
        shutil.copy(source, target)
        paths.append(str(target))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", "--output", type=Path, default=ROOT / "bench-results" / "validate.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipes = thirty_recipes(Path(tmp))
        subprocess.run(
            [sys.executable, "-m", "lora_recipes", "validate", *recipes], check=True, stdout=subprocess.DEVNULL
        )
        bare = median_wall([sys.executable, "-c", "pass"], args.repeats)
        floor = median_wall([sys.executable, "-c", "import yaml, jsonschema, typer"], args.repeats)
        validate = median_wall([sys.executable, "-m", "lora_recipes", "validate", *recipes], args.repeats)
    rows = [("python -c pass", bare), ("import yaml, jsonschema, typer", floor), ("validate 30 recipes", validate)]
    print(f"{'command':<34}{'median s':>10}{'x floor':>10}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>10.3f}{seconds / floor:>10.2f}")
    ratio = validate / floor
    print(f"\nvalidate / import floor = {ratio:.2f}x (goal <= 2.0x): {'OK' if ratio <= 2.0 else 'MISSED'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "bench_validate",
        "repeats": args.repeats,
        "bare_s": bare,
        "floor_s": floor,
        "validate_s": validate,
        "baseline": "import yaml, jsonschema, typer",
        "ratio": ratio,
        "ratio_to_floor": ratio,
        "goal": 2.0,
    }
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
