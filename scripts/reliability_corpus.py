"""An adversarial corpus, run as the user would meet it: bad recipes, bad data, run directories that
are not runs, damaged checkpoints and endpoints that refuse, each a real `python -m lora_recipes ...`
process, counted by class as clean or not.

A case is clean when the command exits with the code the case expects (2 for the user's mistake,
1 for a runtime fault, 0 where the tool recovers, as when a resume skips a damaged newest
checkpoint), prints no traceback, names the place (each case gives the text that must appear: a
file and line, a field, a path), and loses nothing the user made (the files of a folder passed to
`train --run-dir X --overwrite` are all still there; an API key appears in no output and no file;
a resumed run finishes with the adapter of a run never interrupted). Anything else is not clean,
with the reasons: traceback, wrong exit code N, place not named, files lost, secret shown, not
recovered, timeout, or unsupported (the code under test lacks a flag the case needs).

Every case is built in a temporary folder (or --workdir). The command runs with
PYTHONPATH=<--source>/src, so the same corpus measures an older checkout (extracted with
`git archive COMMIT | tar -x -C DIR`) beside this one. Classes: recipe, data, run-dir and evaluate
take a minute or two; checkpoint trains the tiny random Mistral (a couple of minutes on a CPU).

    python scripts/reliability_corpus.py                                # every class, this checkout
    python scripts/reliability_corpus.py --classes recipe,data --require-clean
    python scripts/reliability_corpus.py --source /tmp/before --output /tmp/before.json

Prints a table by class and the cases that are not clean, and writes JSON (--output, default
bench-results/reliability_corpus.json). Exits 0, or 1 with --require-clean when a case is not clean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CLASSES = ("recipe", "data", "run-dir", "checkpoint", "evaluate")
TIMEOUT = 180.0  # seconds a case may run; a read that blocks (a FIFO) has a shorter limit
BLOCKING_TIMEOUT = 45.0
SECRET = "sk-corpus-SECRET-4f1a9c27e8"  # distinctive: searched for in every output and file
KEY_ENV = "CORPUS_API_KEY"
WORDS = ("the", "movie", "was", "great", "and", "acting", "wonderful", "a", "dull", "lifeless", "film", "boring")

MINIMAL = """\
version: 1
base_model: mistralai/Mistral-7B-v0.1
prompt: {template: "Review: {sentence}\\nSentiment:"}
output: {column: label, type: category, labels: [negative, positive]}
data: {dataset: ./data}
"""


def lit(text: str) -> str:
    """A place given as plain text."""
    return re.escape(text)


@dataclass
class Case:
    """One command and what a clean outcome of it is."""

    cls: str
    name: str
    args: list[str]  # after `python -m lora_recipes`; args[0] is the command
    expect: int
    place: list[str]  # regular expressions, each of which must match stdout + stderr
    cwd: Path
    keep: list[Path] = field(default_factory=list)  # files and folders the user made: must survive as they were
    secret: str | None = None  # must appear in no output and no file under cwd
    timeout: float = TIMEOUT
    check: Callable[[], str | None] | None = None  # after the run: a reason it is not clean, or None
    broken: str | None = None  # the case could not be set up (e.g. the tiny run failed): why


@dataclass
class Outcome:
    cls: str
    name: str
    command: str
    expected: int
    exit_code: int | None
    clean: bool
    reasons: list[str]
    seconds: float
    output_tail: str


# -- building blocks -----------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sentiment_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Distinct reviews; every second one positive (label 1)."""
    return [
        {"text": f"review number {i} says {'great' if i % 2 == 0 else 'dull'} things", "label": 1 - i % 2}
        for i in range(start, start + n)
    ]


def sentiment_folder(folder: Path, train: int = 20, validation: int = 4, test: int = 4) -> Path:
    data = folder / "data"
    write_jsonl(data / "train.jsonl", sentiment_rows(train))
    if validation:
        write_jsonl(data / "validation.jsonl", sentiment_rows(validation, start=10_000))
    if test:
        write_jsonl(data / "test.jsonl", sentiment_rows(test, start=20_000))
    return data


def sentiment_recipe(folder: Path, base_model: str = "mistralai/Mistral-7B-v0.1", single: bool = False) -> Path:
    """A category recipe over text/label, as the data tests write it; `single`: for one data file,
    with validation carved from train (as tests/test_data_bad.py's recipe)."""
    recipe = {
        "version": 1,
        "name": "sentiment",
        "base_model": base_model,
        "prompt": {"template": "Review: {text}\nSentiment:"},
        "output": {
            "column": "label",
            "type": "category",
            "labels": ["negative", "positive"],
            "label_map": {"0": "negative", "1": "positive"},
        },
        "data": {"dataset": "data", "evaluation_split": "validation"},
    }
    if single:
        recipe["data"] = {
            "dataset": "rows.jsonl",
            "splits": {"validation": None, "test": None},
            "split": {"validation_fraction": 0.2, "test_fraction": 0},
            "evaluation_split": "validation",
        }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) at `path`, by path relative to it."""
    if path.is_file() or path.is_symlink():
        return {".": path.read_bytes() if path.is_file() else None}
    if not path.is_dir():
        return {}
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in path.rglob("*")
    }


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# -- recipe ------------------------------------------------------------------------------------------


def recipe_cases(work: Path) -> list[Case]:
    cases = []
    invalid = work / "invalid"
    shutil.copytree(FIXTURES / "invalid", invalid)
    for fixture in sorted(invalid.glob("*.yaml")):
        place = [lit(fixture.name) + r":\d+"]
        cases.append(Case("recipe", f"fixture {fixture.name}", ["validate", str(fixture)], 2, place, work))

    minimal = work / "minimal.yaml"
    minimal.write_text(MINIMAL, encoding="utf-8")
    non_finite = (("trainer", "learning_rate", ".nan"), ("adapter", "alpha", ".inf"), ("trainer", "epochs", ".inf"))
    for section, key, value in non_finite:  # validate reads files only: the value is written in one
        path = work / f"{section}_{key}_{value.strip('-.')}.yaml"
        path.write_text(MINIMAL + f"{section}:\n  {key}: {value}\n", encoding="utf-8")
        args = ["validate", str(path)]
        place = [lit(f"{path.name}:7:"), lit(f"{section}.{key}")]
        cases.append(Case("recipe", f"validate, {section}.{key}: {value} in the file", args, 2, place, work))
    for section, key, value in non_finite:
        args = ["plan", str(minimal), "--no-data", "--set", f"{section}.{key}={value}"]
        place = [lit(f"{section}.{key}")]
        cases.append(Case("recipe", f"plan --no-data --set {section}.{key}={value}", args, 2, place, work))
    huge = "9" * 25
    args = ["plan", str(minimal), "--no-data", "--set", f"adapter.r={huge}"]
    cases.append(Case("recipe", "plan --no-data --set adapter.r=<25-digit integer>", args, 2, [lit("adapter.r")], work))
    no_equals = ["plan", str(minimal), "--no-data", "--set", "trainer.learning_rate"]
    cases.append(Case("recipe", "plan --no-data --set without =", no_equals, 2, [lit("trainer.learning_rate")], work))

    folder = work / "folder.yaml"
    folder.mkdir()
    cases.append(Case("recipe", "recipe path is a folder", ["validate", str(folder)], 2, [lit(str(folder))], work))
    missing = work / "nope.yaml"
    cases.append(Case("recipe", "missing recipe file", ["validate", str(missing)], 2, [lit(str(missing))], work))
    under_file = minimal / "x.yaml"
    args = ["validate", str(under_file)]
    cases.append(Case("recipe", "recipe path under a regular file", args, 2, [lit(str(under_file))], work))
    latin1 = work / "latin1.yaml"
    latin1.write_bytes(MINIMAL.encode() + b"description: caf\xe9\n")
    args = ["validate", str(latin1)]
    cases.append(Case("recipe", "non-UTF-8 recipe", args, 2, [lit(latin1.name) + r":\d+"], work))
    big = work / "big.yaml"
    big.write_text(MINIMAL + "#" * (2 * 1024 * 1024) + "\n", encoding="utf-8")
    cases.append(Case("recipe", "2 MiB recipe", ["validate", str(big)], 2, [lit(str(big))], work))
    empty = work / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    cases.append(Case("recipe", "empty recipe file", ["validate", str(empty)], 2, [lit(empty.name)], work))
    if hasattr(os, "mkfifo"):
        fifo = work / "pipe.yaml"
        os.mkfifo(fifo)
        args = ["validate", str(fifo)]
        cases.append(Case("recipe", "recipe is a FIFO", args, 2, [lit(str(fifo))], work, timeout=BLOCKING_TIMEOUT))
    return cases


# -- data --------------------------------------------------------------------------------------------


def data_cases(work: Path) -> list[Case]:
    cases = []

    def case(name: str, data: Path, place: list[str], folder: Path, timeout: float = TIMEOUT) -> None:
        """`plan` with --data `data`: a folder of split files, or one file that validation is carved from."""
        recipe = sentiment_recipe(folder, single=not (data.is_dir() or data.name == "data"))
        args = ["plan", str(recipe), "--data", str(data)]
        cases.append(Case("data", name, args, 2, place, folder, keep=[data], timeout=timeout))

    def new(name: str) -> Path:
        folder = work / slug(name)
        folder.mkdir()
        return folder

    f = new("missing path")
    case("missing path", f / "no" / "data", [lit(str(f / "no" / "data"))], f)

    f = new("empty parquet")
    data = sentiment_folder(f, validation=0)
    shutil.copy(FIXTURES / "bad_data" / "empty.parquet", data / "validation.parquet")
    case("empty parquet split", data, [lit("validation.parquet")], f)

    f = new("empty jsonl")
    (f / "rows.jsonl").write_bytes(b"")
    case("empty jsonl (0 bytes)", f / "rows.jsonl", [lit(str(f / "rows.jsonl"))], f)

    f = new("blank jsonl")
    (f / "rows.jsonl").write_text("\n\n", encoding="utf-8")
    case("jsonl of blank lines", f / "rows.jsonl", [lit(str(f / "rows.jsonl"))], f)

    f = new("empty split file")
    data = sentiment_folder(f, validation=0)
    (data / "validation.jsonl").write_text("", encoding="utf-8")
    case("empty split file in a folder", data, [lit("validation.jsonl")], f)

    f = new("broken line")
    rows = f / "rows.jsonl"
    rows.write_text('{"text": "fine", "label": 0}\n{"text": "broken", "label": }\n', encoding="utf-8")
    case("jsonl with a broken line", rows, [lit("rows.jsonl") + r".*\bline 2\b"], f)

    f = new("not utf8")
    rows = f / "rows.jsonl"
    rows.write_bytes(b'{"text": "fine", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
    case("jsonl with bytes that are not UTF-8", rows, [lit("rows.jsonl") + r".*\bline 2\b"], f)

    f = new("ragged csv")
    rows = f / "rows.csv"
    rows.write_text("text,label\ngood,1\nonly text\nbad,0\n", encoding="utf-8")
    case("CSV row with too few fields", rows, [lit("rows.csv") + r".*\bline 3\b"], f)

    f = new("missing column")
    write_jsonl(f / "rows.jsonl", [{"text": f"x {i}", "sentiment": i % 2} for i in range(10)])
    case("missing output column", f / "rows.jsonl", [r"recipe\.yaml:\d+", lit("label")], f)

    f = new("missing template column")
    write_jsonl(f / "rows.jsonl", [{"review": f"x {i}", "label": i % 2} for i in range(10)])
    place = [r"recipe\.yaml:\d+|rows\.jsonl", r"\btext\b"]  # the template's line, or the file without it
    case("missing prompt template column", f / "rows.jsonl", place, f)

    f = new("label outside")
    bad = sentiment_rows(10)
    bad[4]["label"] = 2
    write_jsonl(f / "rows.jsonl", bad)
    case("label outside output.labels", f / "rows.jsonl", [lit("rows.jsonl") + r".*\brow 5\b"], f)

    f = new("not parquet")
    (f / "rows.parquet").write_text("text,label\nfine,1\n", encoding="utf-8")
    case("file that is not Parquet", f / "rows.parquet", [lit(str(f / "rows.parquet"))], f)

    if hasattr(os, "mkfifo"):
        f = new("fifo file")
        os.mkfifo(f / "rows.jsonl")
        case("data path is a FIFO", f / "rows.jsonl", [lit(str(f / "rows.jsonl"))], f, BLOCKING_TIMEOUT)
        f = new("fifo split")
        data = sentiment_folder(f, validation=0)
        os.mkfifo(data / "validation.jsonl")
        case("split file is a FIFO", data, [lit(str(data / "validation.jsonl"))], f, BLOCKING_TIMEOUT)

    f = new("dangling link")
    (f / "link").symlink_to(f / "gone")
    case("dangling symbolic link", f / "link", [lit(str(f / "link"))], f)

    f = new("dangling split link")
    data = sentiment_folder(f, validation=0)
    (data / "validation.jsonl").symlink_to(f / "gone.jsonl")
    case("split file is a dangling symbolic link", data, [lit(str(data / "validation.jsonl"))], f)

    f = new("under a file")
    write_jsonl(f / "rows.jsonl", sentiment_rows(4))
    case("path under a regular file", f / "rows.jsonl" / "train.jsonl", [lit("rows.jsonl/train.jsonl")], f)

    f = new("folder as split file")
    data = sentiment_folder(f, validation=0)
    (data / "validation.jsonl").mkdir()
    case("folder where a split file belongs", data, [lit(str(data / "validation.jsonl"))], f)

    f = new("unknown name")
    data = sentiment_folder(f)
    write_jsonl(data / "train (1).jsonl", sentiment_rows(2))
    case("unknown file name in a data folder", data, [lit("train (1).jsonl")], f)

    f = new("empty part")
    shutil.copytree(FIXTURES / "bad_data" / "parts", f / "data")
    (f / "data" / "train-part2.jsonl").write_text("", encoding="utf-8")
    case("empty part of a split", f / "data", [lit("train-part2.jsonl")], f)

    f = new("part columns")
    shutil.copytree(FIXTURES / "bad_data" / "parts", f / "data")
    write_jsonl(f / "data" / "train-part2.jsonl", [{"review": "x", "label": 1}])
    case("parts of a split with other columns", f / "data", [lit("train-part2.jsonl")], f)
    return cases


# -- run-dir -----------------------------------------------------------------------------------------


def project(folder: Path, looks_like_a_run: bool = False) -> Path:
    """A folder the user made, not lora-recipes: a repository with sources and notes."""
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "src").mkdir()
    (folder / "src" / "model.py").write_text("print('mine')\n")
    (folder / "notes.txt").write_text("my notes\n")
    if looks_like_a_run:
        (folder / "recipe.resolved.yaml").write_text("name: x\n")
    return folder


def fake_run(folder: Path, finished: bool = True) -> Path:
    """A run directory as lora-recipes leaves one (marker, recipe, metrics, a checkpoint, an adapter)."""
    folder.mkdir(parents=True)
    (folder / ".lora-recipes-run").write_text('{"lora_recipes": "0.1.0", "what": "a lora-recipes training run"}')
    (folder / "recipe.resolved.yaml").write_text("name: x\n")
    (folder / "plan.json").write_text("{}")
    (folder / "manifest.json").write_text("{}")
    (folder / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 1.0}\n')
    (folder / "checkpoints" / "step-00000004").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000004" / "state.json").write_text("{}")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    if finished:
        (folder / "cost_report.json").write_text("{}")
    return folder


def run_dir_cases(work: Path) -> list[Case]:
    """`train` pointed at folders that are not (new) runs. The model is a hub id that cannot load
    (offline, an empty hub cache): whatever a case does to the folder happens before that."""
    cases = []

    def case(name: str, extra: list[str], keep: Path, place: str, folder: Path) -> None:
        recipe = sentiment_recipe(folder, base_model="HuggingFaceTB/SmolLM2-135M")
        sentiment_folder(folder)
        cases.append(Case("run-dir", name, ["train", str(recipe), *extra], 2, [lit(place)], folder, keep=[keep]))

    def new(name: str) -> Path:
        folder = work / slug(name)
        folder.mkdir()
        return folder

    f = new("project overwrite")
    p = project(f / "project")
    case("--run-dir PROJECT --overwrite", ["--run-dir", str(p), "--overwrite"], p, str(p), f)

    f = new("project")
    p = project(f / "project")
    case("--run-dir PROJECT (no --overwrite)", ["--run-dir", str(p)], p, str(p), f)

    f = new("older run overwrite")
    p = project(f / "project", looks_like_a_run=True)
    case("--run-dir PROJECT-WITH-A-RESOLVED-RECIPE --overwrite", ["--run-dir", str(p), "--overwrite"], p, str(p), f)

    f = new("runs overwrite")
    runs = f / "runs"
    fake_run(runs / "a-20260101-000000")
    fake_run(runs / "b-20260102-000000")
    case("--run-dir FOLDER-OF-RUNS --overwrite", ["--run-dir", str(runs), "--overwrite"], runs, str(runs), f)

    f = new("run dir is a file")
    a_file = f / "run.txt"
    a_file.write_text("mine\n")
    case("--run-dir FILE --overwrite", ["--run-dir", str(a_file), "--overwrite"], a_file, str(a_file), f)

    f = new("run dir under a file")
    a_file = f / "notes.txt"
    a_file.write_text("mine\n")
    case("--run-dir FILE/run", ["--run-dir", str(a_file / "run")], a_file, str(a_file / "run"), f)

    def resume(name: str, target: Path, folder: Path) -> None:
        keep = [target] if target.exists() else []
        cases.append(
            Case("run-dir", name, ["train", "--resume", str(target)], 2, [lit(str(target))], folder, keep=keep)
        )

    f = new("resume project")
    resume("--resume PROJECT", project(f / "project"), f)
    f = new("resume missing")
    resume("--resume MISSING-FOLDER", f / "nowhere", f)
    f = new("resume finished")
    resume("--resume FINISHED-RUN", fake_run(f / "run"), f)
    f = new("resume file")
    a_file = f / "run.txt"
    a_file.write_text("mine\n")
    resume("--resume FILE", a_file, f)
    return cases


# -- checkpoint --------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_shapes(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({n: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for n, v in tensors.items()}, str(path))


def extend_state(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "extra": 1}, indent=2))


# As tests/test_train_checkpoint.py damages them: kind -> (the file damaged, how).
DAMAGE: dict[str, tuple[str, Callable[[Path], object]]] = {
    "truncated safetensors": ("trainable.safetensors", truncate),
    "garbage optimizer state": ("optimizer.pt", lambda p: p.write_bytes(random.Random(0).randbytes(3000))),
    "broken state.json": ("state.json", lambda p: p.write_text('{"step": 4,')),
    "extended state.json": ("state.json", extend_state),
    "missing RNG file": ("rng-0.pt", lambda p: p.unlink()),
    "tensors of the wrong shape": ("trainable.safetensors", wrong_shapes),
    "empty scheduler file": ("scheduler.pt", lambda p: p.write_bytes(b"")),
}
CHECKPOINT_SETS = (
    "trainer.train_steps=6",
    "trainer.eval_steps=6",
    "trainer.steps_per_checkpoint=2",
    "trainer.checkpoints_to_keep=3",
    "trainer.batch_size=2",
    "trainer.gradient_accumulation_steps=1",
)


def tiny_recipe(folder: Path, model: Path) -> Path:
    rng = random.Random(0)
    rows = [
        {
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))),
            "label": rng.choice(["negative", "positive"]),
        }
        for _ in range(60)
    ]
    write_jsonl(folder / "reviews.jsonl", rows)
    recipe = {
        "version": 1,
        "name": "tiny-corpus",
        "base_model": str(model),
        "prompt": {"template": "Review: {text} Sentiment:"},
        "output": {"column": "label", "type": "category", "labels": ["negative", "positive"]},
        "data": {
            "dataset": str(folder / "reviews.jsonl"),
            "splits": {"validation": None, "test": None},
            "split": {"validation_fraction": 0.2, "test_fraction": 0.1},
        },
        "trainer": {"learning_rate": 0.005},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def same_adapter(run: Path, reference: Path) -> str | None:
    """None when the run finished with the reference run's adapter, tensor for tensor."""
    import torch
    from safetensors.torch import load_file

    name = "adapter/adapter_model.safetensors"
    if not (run / name).is_file():
        return f"not recovered: the run did not finish ({name} missing)"
    a, b = load_file(str(run / name)), load_file(str(reference / name))
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        return "not recovered: the adapter differs from an uninterrupted run's"
    return None


def checkpoint_cases(work: Path, run: Callable[[list[str], Path, float], tuple[int | None, str]]) -> list[Case]:
    """A tiny run stopped at step 4 (checkpoints 2 and 4), copied once per kind of damage to the
    newest checkpoint, then `train --resume`: it must skip step 4, resume from step 2 and finish
    with the adapter of a run that was never stopped."""
    model = work / "tiny-model"
    code = "import sys; from lora_recipes.model.tiny import make_tiny_model; make_tiny_model(sys.argv[1])"
    done, out = run(["-c", code, str(model)], work, 600)
    broken = None if done == 0 else f"setup failed: the tiny model was not built (exit {done}): {out[-300:]}"
    recipe = tiny_recipe(work, model)
    sets = [item for s in CHECKPOINT_SETS for item in ("--set", s)]
    stopped, straight = work / "stopped", work / "straight"
    for folder, extra in ((stopped, ["--stop-at-step", "4"]), (straight, [])):
        if broken is None:
            args = ["-m", "lora_recipes", "train", str(recipe), "--run-dir", str(folder), *sets, *extra]
            done, out = run(args, work, 600)
            if done != 0:
                broken = f"setup failed: train {' '.join(extra)} exited {done}: {out[-300:]}"
    newest = stopped / "checkpoints" / "step-00000004"
    if broken is None and not (stopped / "checkpoints" / "step-00000002").is_dir():
        broken = "setup failed: the stopped run has no checkpoint at step 2"

    cases = []
    for kind, (file, damage) in DAMAGE.items():
        folder = work / slug(kind)
        folder.mkdir()
        target = folder / "run"
        if broken is None:
            shutil.copytree(stopped, target)
            damage(target / newest.relative_to(stopped) / file)

        def finished_the_same(target: Path = target) -> str | None:
            return same_adapter(target, straight)

        place = [lit(newest.name), lit(file)]
        args = ["train", "--resume", str(target)]
        cases.append(Case("checkpoint", kind, args, 0, place, folder, check=finished_the_same, broken=broken))

    # Every checkpoint damaged: nothing to resume from, said with both, and neither removed.
    folder = work / "every-checkpoint-damaged"
    folder.mkdir()
    target = folder / "run"
    if broken is None:
        shutil.copytree(stopped, target)
        for step in ("step-00000002", "step-00000004"):
            truncate(target / "checkpoints" / step / "optimizer.pt")
    place = [lit("step-00000002"), lit("step-00000004")]
    keep = [target / "checkpoints"]
    args = ["train", "--resume", str(target)]
    cases.append(Case("checkpoint", "every checkpoint damaged", args, 1, place, folder, keep=keep, broken=broken))
    return cases


# -- evaluate ----------------------------------------------------------------------------------------


class Endpoint:
    """An HTTP server on 127.0.0.1 that answers every request with `status` and a body that
    quotes the request's Authorization header back (as some servers do in their errors)."""

    def __init__(self, status: int, json_body: bool = True):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                said = self.headers.get("Authorization") or "no key"
                if json_body:
                    data = json.dumps({"error": {"message": f"request refused for {said}"}}).encode()
                else:
                    data = f"<html><body>Gateway error; you sent {said}</body></html>".encode()
                try:
                    self.send_response(endpoint.status)
                    self.send_header("Content-Type", "application/json" if json_body else "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _handle

        self.status = status
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_task(folder: Path) -> Path:
    data = folder / "data"
    for split, n in (("train", 8), ("validation", 4), ("test", 6)):
        rows = [{"text": f"{split} review {i}", "label": ["negative", "positive"][i % 2]} for i in range(n)]
        write_jsonl(data / f"{split}.jsonl", rows)
    recipe = folder / "sentiment.yaml"
    recipe.write_text(
        "version: 1\n"
        "name: sentiment\n"
        "base_model: ./no-model-here\n"
        "prompt: {template: 'Review: {text} Sentiment:'}\n"
        "output: {column: label, type: category, labels: [negative, positive]}\n"
        "data: {dataset: ./data}\n"
        "evaluation: {metric: accuracy}\n",
        encoding="utf-8",
    )
    return recipe


def evaluate_cases(work: Path, servers: list[Endpoint]) -> list[Case]:
    cases = []

    def case(name: str, url: str, expect: int, place: list[str]) -> None:
        folder = work / slug(name)
        folder.mkdir()
        recipe = write_task(folder)
        args = ["evaluate", str(recipe), "--endpoint", url, "--model", "m", "--api-key-env", KEY_ENV]
        args += ["--output", str(folder / "out")]
        for item in ("evaluation.endpoints.retries=1", "evaluation.endpoints.backoff=0.01"):
            args += ["--set", item]
        args += ["--set", "evaluation.endpoints.timeout=5"]
        cases.append(Case("evaluate", name, args, expect, place, folder, secret=SECRET))

    for status, json_body, what in ((401, True, "401 always"), (500, True, "500 always"), (502, False, "502 HTML")):
        servers.append(Endpoint(status, json_body))
        place = [rf"\b{status}\b"] + ([lit(KEY_ENV)] if status == 401 else [])
        case(f"endpoint answers {what} (body quotes the key)", servers[-1].url, 1, place)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    case("connection refused", url, 1, [r"(?i)connect"])
    case("URL without a scheme", "localhost:8000/v1", 2, [lit("--endpoint"), lit("localhost:8000/v1")])
    case("URL with a port out of range", "http://localhost:99999/v1", 2, [lit("--endpoint"), lit("99999")])
    query = f"api.example.com/v1?api_key={SECRET}"
    case("URL without a scheme, a key in its query", query, 2, [lit("--endpoint"), lit("api.example.com")])
    return cases


# -- running -----------------------------------------------------------------------------------------


class Runner:
    def __init__(self, source: Path, work: Path):
        self.source = source
        self.env = {
            **os.environ,
            "PYTHONPATH": str(source / "src"),
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(work / "hf-home"),
            "LORA_RECIPES_CACHE": str(work / "cache"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or "1",
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "1",
            KEY_ENV: SECRET,
        }
        self._help: dict[str, str] = {}
        self._lock = threading.Lock()

    def python(self, args: list[str], cwd: Path, timeout: float) -> tuple[int | None, str]:
        """Run `python ARGS`; (exit code or None on timeout, stdout + stderr)."""
        try:
            done = subprocess.run(
                [sys.executable, *args],
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as expired:
            out = (expired.stdout or b"") + (expired.stderr or b"")
            return None, out.decode(errors="replace")
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace")

    def help_text(self, command: str) -> str:
        with self._lock:
            if command not in self._help:
                self._help[command] = self.python(["-m", "lora_recipes", command, "--help"], ROOT, 120)[1]
            return self._help[command]

    def unsupported(self, case: Case) -> list[str]:
        """The flags of the case that the code under test does not know."""
        flags = [a.split("=")[0] for a in case.args[1:] if a.startswith("--")]
        text = self.help_text(case.args[0])
        return [f for f in dict.fromkeys(flags) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]

    def run_case(self, case: Case) -> Outcome:
        command = "lora-recipes " + " ".join(case.args)
        if case.broken:
            return Outcome(case.cls, case.name, command, case.expect, None, False, [case.broken], 0.0, "")
        missing = self.unsupported(case)
        if missing:
            why = f"unsupported (no {', '.join(missing)})"
            return Outcome(case.cls, case.name, command, case.expect, None, False, [why], 0.0, "")
        before = {str(p): snapshot(p) for p in case.keep}
        started = time.perf_counter()
        code, out = self.python(["-m", "lora_recipes", *case.args], case.cwd, case.timeout)
        seconds = time.perf_counter() - started
        reasons = []
        if code is None:
            reasons.append(f"timeout after {case.timeout:.0f} s")
        else:
            if "Traceback" in out:
                reasons.append("traceback")
            if code != case.expect:
                reasons.append(f"wrong exit code {code} (expected {case.expect})")
        unnamed = [p for p in case.place if not re.search(p, out)]
        if unnamed:
            reasons.append(f"place not named (no match for {', '.join(unnamed)})")
        for path, files in before.items():
            after = snapshot(Path(path))
            gone = [name for name, data in files.items() if after.get(name, b"\0missing") != data]
            if gone:
                shown = ", ".join(sorted(gone)[:4]) + (", ..." if len(gone) > 4 else "")
                reasons.append(f"files lost ({len(gone)} under {path}: {shown})")
        if case.secret:
            where = ["the output"] if case.secret in out else []
            where += [
                str(p.relative_to(case.cwd))
                for p in sorted(case.cwd.rglob("*"))
                if p.is_file() and not p.is_symlink() and case.secret.encode() in p.read_bytes()
            ]
            if where:
                reasons.append(f"secret shown ({', '.join(where[:4])})")
        if case.check is not None and code is not None:
            extra = case.check()
            if extra:
                reasons.append(extra)
        tail = "\n".join(out.strip().splitlines()[-6:])
        return Outcome(case.cls, case.name, command, case.expect, code, not reasons, reasons, seconds, tail)


def git_commit(source: Path) -> str | None:
    """The commit checked out at `source`, when it is a git checkout of its own."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != source:  # a tree extracted inside another checkout is not its HEAD
        return None
    return git("rev-parse", "HEAD")


@contextmanager
def workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        if given.exists() and any(given.iterdir()):
            sys.exit(f"--workdir {given}: not empty (every case is built afresh; give a new or empty folder)")
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="reliability-corpus-") as tmp:
        yield Path(tmp).resolve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose src/ is run (default: this one)")
    parser.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated, of {', '.join(CLASSES)}")
    parser.add_argument("--workdir", type=Path, default=None, help="build the cases here (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "reliability_corpus.json")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--require-clean", action="store_true", help="exit 1 when a case is not clean")
    args = parser.parse_args()
    classes = [c for c in args.classes.split(",") if c]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        parser.error(f"--classes: unknown {', '.join(unknown)} (choose from {', '.join(CLASSES)})")
    source = args.source.resolve()
    if not (source / "src" / "lora_recipes" / "__init__.py").is_file():
        parser.error(f"--source {source}: no src/lora_recipes there")

    started = time.perf_counter()
    servers: list[Endpoint] = []
    with workdir(args.workdir) as work:
        runner = Runner(source, work)
        try:
            cases: list[Case] = []
            for cls in classes:
                folder = work / cls
                folder.mkdir()
                if cls == "recipe":
                    cases += recipe_cases(folder)
                elif cls == "data":
                    cases += data_cases(folder)
                elif cls == "run-dir":
                    cases += run_dir_cases(folder)
                elif cls == "checkpoint":
                    print("checkpoint: training the tiny model (stopped at step 4, and straight through)", flush=True)
                    cases += checkpoint_cases(folder, runner.python)
                else:
                    cases += evaluate_cases(folder, servers)
            print(f"{len(cases)} cases in {', '.join(classes)}; source {source}", flush=True)
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                outcomes = list(pool.map(runner.run_case, cases))
        finally:
            for server in servers:
                server.close()
    seconds = time.perf_counter() - started

    by_class = {
        cls: {
            "cases": sum(o.cls == cls for o in outcomes),
            "clean": sum(o.cls == cls and o.clean for o in outcomes),
            "not_clean": sum(o.cls == cls and not o.clean for o in outcomes),
        }
        for cls in classes
    }
    print(f"\n| {'class':<11} | {'cases':>5} | {'clean':>5} | {'not clean':>9} |")
    print(f"|{'-' * 13}|{'-' * 7}|{'-' * 7}|{'-' * 11}|")
    for cls, n in by_class.items():
        print(f"| {cls:<11} | {n['cases']:>5} | {n['clean']:>5} | {n['not_clean']:>9} |")
    total = {k: sum(n[k] for n in by_class.values()) for k in ("cases", "clean", "not_clean")}
    print(f"| {'all':<11} | {total['cases']:>5} | {total['clean']:>5} | {total['not_clean']:>9} |")
    bad = [o for o in outcomes if not o.clean]
    if bad:
        print("\nnot clean:")
        for o in bad:
            print(f"- {o.cls} / {o.name}: {'; '.join(o.reasons)}")
    print(f"\n{seconds:.0f} s")

    record = {
        "source": str(source),
        "commit": git_commit(source),
        "python": platform.python_version(),
        "seconds": seconds,
        "classes": by_class,
        "total": total,
        "cases": [o.__dict__ for o in outcomes],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 1 if args.require_clean and bad else 0


if __name__ == "__main__":
    sys.exit(main())
