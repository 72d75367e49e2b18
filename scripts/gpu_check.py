"""The GPU path in one run, under ten minutes on one CUDA GPU: a table of checks, exit code 1 when
any fails.

    make install CONSTRAINTS= && make gpu-check     # a machine with a CUDA GPU: the newest releases
    python scripts/gpu_check.py [--budget 540] [--workdir DIR] [--json FILE] [--steps 20 --stop-at 8]
    python scripts/gpu_check.py --device cpu         # the same script on a CPU (the test suite's run)

What it checks, in this order (each a row of the table; `skipped` where the device cannot do it):

1. versions (python, torch and its CUDA, transformers, peft, bitsandbytes, accelerate), the device's
   name and compute capability, torch's two bf16 answers (with and without emulation), and the
   precision lora-recipes picks from the capability (bf16 from 8.0 on, else fp16 + loss scaling);
2. a tiny random Mistral in 4-bit NF4 trained 20 steps with `lora-recipes train` (gradient
   checkpointing on; on CUDA the paged_adamw_8bit optimizer), then again stopped at step 8 and
   continued with `--resume`: the 20 losses and the validation losses equal the straight run's
   (exactly on a CPU; within 1e-2 relative on CUDA, whose kernels may sum in another order);
   the gradient norm is above zero at every step of both;
3. bitsandbytes' paged optimizers page a 200,000-element tensor's state and not a 32,768-element one
   (the threshold trainer.optimizer.type's description gives); CUDA only;
4. one batch through the trained adapter with and without the logits mask (the LM head only where
   the loss is): loss and gradient norm agree within 1e-3 relative;
5. `lora-recipes evaluate` in generate and rank modes at batch sizes 1 and 16: the same
   predictions at both batch sizes;
6. scripts/bench_gpu.py on the Mistral-7B shape with random weights, 8 layers, at batch sizes 8
   and 1, against HF Trainer + PEFT, with peak allocated and reserved memory beside the estimate;
   then all 32 layers at the same batch sizes while the time budget (--budget) allows; a size
   whose estimated peak memory exceeds the GPU's is skipped. CUDA only (tests/test_scripts.py runs
   bench_gpu's code path on a CPU at toy width and reads its JSON with `describe_bench`).

On a CPU the CUDA steps are marked skipped and the rest run as on a GPU (the test suite runs it with
--steps 4 --stop-at 2 to stay near two minutes).

Training and evaluation run as users run them: `python -m lora_recipes ...` in subprocesses.
Writes the table and every figure as JSON (--json; default $OUT/gpu_check.json when OUT is set,
else WORKDIR/gpu_check.json) and bench_gpu's own JSON files beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
SRC_ON_PATH = importlib.util.find_spec("lora_recipes") is None  # a bare checkout on a lent GPU machine
if SRC_ON_PATH:
    sys.path.insert(0, str(ROOT / "src"))

STEPS, STOP_AT = 20, 8  # --steps, --stop-at (fewer for the test suite's CPU run)
EVAL_BATCH_SIZES = (1, 16)
WORDS = ("the", "movie", "was", "great", "and", "wonderful", "a", "dull", "lifeless", "film", "with", "no", "wit")


@dataclass
class Row:
    check: str
    status: str  # ok, FAIL, skipped or info
    detail: str
    seconds: float = 0.0


class CheckFailed(Exception):
    """A check's own failure (its message is the row's detail)."""


class Checks:
    """The table, filled one row at a time; a check that raises is a FAIL with its message."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.started = time.monotonic()

    def info(self, check: str, detail: str) -> None:
        self.rows.append(Row(check, "info", detail))

    def skip(self, check: str, why: str) -> None:
        self.rows.append(Row(check, "skipped", why))

    def run(self, check: str, body: Callable[[], str]) -> bool:
        start = time.monotonic()
        try:
            detail, status = body(), "ok"
        except CheckFailed as exc:
            detail, status = str(exc), "FAIL"
        except Exception as exc:  # a crash inside a check fails that check, not the script
            detail, status = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                "FAIL",
            )
        self.rows.append(Row(check, status, detail, time.monotonic() - start))
        print(f"[{time.monotonic() - self.started:6.0f} s] {status:<7} {check}: {detail}", file=sys.stderr)
        return status == "ok"

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def table(self) -> str:
        lines = ["| check | result | detail |", "|---|---|---|"]
        for r in self.rows:
            seconds = f" ({r.seconds:.0f} s)" if r.seconds >= 1 else ""
            lines.append(f"| {r.check} | {r.status} | {r.detail.replace('|', '/')}{seconds} |")
        return "\n".join(lines)


# -- running what users run ----------------------------------------------------------------------


class Work:
    """The work folder, and the commands run in it."""

    def __init__(self, root: Path, device: str) -> None:
        self.root, self.device = root, device
        self.env = {**os.environ, "LORA_RECIPES_CACHE": str(root / "cache")}
        if SRC_ON_PATH:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))

    def run(self, command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.root)
        if done.returncode != 0:
            tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-3:]
            raise CheckFailed(f"{' '.join(command[1:4])} ... exited {done.returncode}: {' / '.join(tail)[-600:]}")
        return done

    def lora_recipes(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "lora_recipes", *args])


def write_task(work: Path, device: str, optimizer: str, steps: int) -> Path:
    """A tiny random Mistral, review rows of varied length in train/validation/test files, and the
    recipe that trains on them (4-bit, gradient checkpointing, 20 steps)."""
    from lora_recipes.model.tiny import make_tiny_model

    model = make_tiny_model(work / "tiny-mistral")
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split, rows in (("train", 96), ("validation", 16), ("test", 24)):
        with (data / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for _ in range(rows):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))
                f.write(json.dumps({"text": text, "label": rng.choice(["negative", "positive"])}) + "\n")
    recipe = {
        "version": 1,
        "name": "gpu-check",
        "base_model": str(model),
        "prompt": {"template": "Review: {text} Sentiment:"},
        "output": {"column": "label", "type": "category", "labels": ["negative", "positive"]},
        "data": {"dataset": str(data)},
        "quantization": {"bits": 4},
        "adapter": {"dropout": 0.0},
        "generation": {"max_new_tokens": 4},
        "trainer": {
            "train_steps": steps,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "learning_rate": 0.005,
            "eval_steps": max(steps // 2, 1),
            "steps_per_checkpoint": steps,  # --stop-at-step writes the one the resume starts from
            "enable_gradient_checkpointing": True,
            "optimizer": {"type": optimizer},
            "device": device,
        },
        "serving": {"targets": []},
    }
    path = work / "gpu-check.yaml"
    path.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")  # JSON is YAML
    return path


def metrics(run_dir: Path, event: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def max_relative_difference(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)), default=0.0)


# -- the checks ------------------------------------------------------------------------------------


def environment(checks: Checks, device: str) -> tuple[int, int] | None:
    """Versions, the device, torch's bf16 answers and the precision lora-recipes resolves."""
    import torch

    from lora_recipes.model import loading as models

    versions = [f"python {platform.python_version()}", f"torch {torch.__version__} (CUDA {torch.version.cuda})"]
    for name in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except Exception as exc:  # bitsandbytes without its kernels raises on import
            versions.append(f"{name}: {type(exc).__name__}")
    checks.info("versions", ", ".join(versions))
    if device != "cuda":
        checks.info("device", f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
        checks.skip("bf16 answers and precision", "no CUDA GPU")
        return None
    capability = models.device_capability("cuda")
    assert capability is not None
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    checks.info(
        "device",
        f"{torch.cuda.get_device_name()}, compute capability {capability[0]}.{capability[1]}, {memory:.0f} GiB",
    )
    checks.info(
        "torch bf16 answers",
        f"is_bf16_supported() = {torch.cuda.is_bf16_supported()}, "
        f"is_bf16_supported(including_emulation=False) = {torch.cuda.is_bf16_supported(including_emulation=False)}",
    )

    def precision() -> str:
        p = models.resolve_precision("auto", "bfloat16", device_type="cuda", capability=capability)
        native = capability >= models.BF16_CAPABILITY
        expected = ("bfloat16", "bfloat16", "bf16") if native else ("float16", "float16", "fp16")
        got = (p.weights, p.compute, p.mixed_precision)
        if got != expected:
            raise CheckFailed(f"auto resolved to {got}, expected {expected} at capability {capability}")
        return f"auto: {p.weights} weights, {p.compute} 4-bit compute, {p.mixed_precision} mixed precision"

    checks.run("precision from the compute capability", precision)
    return capability


def train_and_resume(checks: Checks, work: Work, recipe: Path, steps: int, stop_at: int) -> Path | None:
    """The straight run, the stopped-and-resumed run, and their losses and gradient norms."""
    straight, stopped = work.root / "runs" / "straight", work.root / "runs" / "stopped"
    optimizer = json.loads(recipe.read_text())["trainer"]["optimizer"]["type"]
    what = f"4-bit NF4, gradient checkpointing, {optimizer}"

    def train_straight() -> str:
        work.lora_recipes("train", str(recipe), "--run-dir", str(straight), "--overwrite")
        report = json.loads((straight / "cost_report.json").read_text())
        losses = [r["loss"] for r in metrics(straight, "train")]
        if report["steps"] != steps or len(losses) != steps:
            raise CheckFailed(f"{report['steps']} steps, {len(losses)} losses, not {steps}")
        peak = report["peak_memory_bytes"] / 2**20
        reserved = report.get("peak_memory_reserved_bytes")
        memory = f"peak {peak:,.0f} MiB" + (f" allocated, {reserved / 2**20:,.0f} MiB reserved" if reserved else "")
        return f"{what}: loss {losses[0]:.4f} -> {losses[-1]:.4f}; {memory}"

    if not checks.run(f"train {steps} steps (lora-recipes train)", train_straight):
        return None

    def stop_and_resume() -> str:
        first = work.lora_recipes(
            "train", str(recipe), "--run-dir", str(stopped), "--overwrite", "--stop-at-step", str(stop_at)
        )
        if f"stopped at step {stop_at}" not in first.stdout + first.stderr:
            raise CheckFailed(f"--stop-at-step {stop_at} did not stop there")
        work.lora_recipes("train", "--resume", str(stopped))
        tolerance = 0.0 if work.device == "cpu" else 1e-2
        a, b = [r["loss"] for r in metrics(stopped, "train")], [r["loss"] for r in metrics(straight, "train")]
        va = [r["validation_loss"] for r in metrics(stopped, "validation")]
        vb = [r["validation_loss"] for r in metrics(straight, "validation")]
        worst = max(max_relative_difference(a, b), max_relative_difference(va, vb))
        if worst > tolerance or len(a) != steps:
            raise CheckFailed(f"{len(a)} losses; largest relative difference {worst:.2e} (allowed {tolerance:g})")
        return f"stopped at {stop_at}, resumed to {steps}: losses equal (largest relative difference {worst:.1e})"

    checks.run(f"stop at step {stop_at} and --resume: same losses", stop_and_resume)

    def grad_norms() -> str:
        norms = [r["grad_norm"] for run in (straight, stopped) if run.is_dir() for r in metrics(run, "train")]
        bad = [n for n in norms if not (math.isfinite(n) and n > 0)]
        if bad or not norms:
            raise CheckFailed(f"{len(bad)} of {len(norms)} steps have a gradient norm that is 0 or not finite")
        return f"{len(norms)} steps, smallest {min(norms):.3g}"

    checks.run("gradient norm above zero every step", grad_norms)
    return straight


def paged_optimizer(checks: Checks, device: str) -> None:
    name = "paged optimizers page tensors of >= 100,000 elements only"
    if device != "cuda":
        checks.skip(name, "no CUDA GPU")
        return

    def paged() -> str:
        import bitsandbytes as bnb
        import torch

        from lora_recipes.model.loading import PAGED_MIN_ELEMENTS, build_optimizer

        found = []
        for kind in ("paged_adamw_8bit", "paged_adamw_32bit"):
            big = torch.nn.Parameter(torch.zeros(2 * PAGED_MIN_ELEMENTS, device="cuda"))
            small = torch.nn.Parameter(torch.zeros(32_768, device="cuda"))
            optimizer = build_optimizer([big, small], type=kind, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
            for p in (big, small):
                p.grad = torch.randn_like(p)
            optimizer.step()
            is_paged = [bool(getattr(optimizer.state[p]["state1"], "is_paged", False)) for p in (big, small)]
            if is_paged != [True, False]:
                raise CheckFailed(f"{kind}: paged (200,000 elements, 32,768 elements) = {is_paged}")
            optimizer.load_state_dict(optimizer.state_dict())  # what a resume does
            optimizer.step()
            found.append(kind)
            del optimizer
        bnb_version = bnb.__version__
        return f"{' and '.join(found)} (bitsandbytes {bnb_version}): 200,000 elements paged, 32,768 not"

    checks.run(name, paged)


def logits_mask(checks: Checks, work: Work, recipe: Path, run_dir: Path) -> None:
    """One batch through the trained adapter with and without the logits mask."""

    def compare() -> str:
        import torch

        from lora_recipes.data.pipeline import prepare_training_data
        from lora_recipes.model import loading as models
        from lora_recipes.model.source import load_options, recipe_model_source
        from lora_recipes.recipe.loader import load_recipe
        from lora_recipes.training import batching
        from lora_recipes.training.step import token_loss_sum

        os.environ["LORA_RECIPES_CACHE"] = work.env["LORA_RECIPES_CACHE"]
        models.quiet_transformers()
        loaded = load_recipe(recipe)
        source = recipe_model_source(loaded)
        tokenizer = models.load_tokenizer(source)
        model = models.load_base_model(source, **load_options(loaded), device=work.device)
        model = models.prepare_for_training(model, quantized=True, gradient_checkpointing=False)
        model = models.load_adapter(model, run_dir / "adapter", trainable=True)
        if not models.supports_logits_mask(model):
            raise CheckFailed(f"{type(model.get_base_model()).__name__} takes no logits mask")
        data = prepare_training_data(loaded, tokenizer)
        batch = list(range(min(8, len(data.train))))
        inputs = batching.collate(data.train, batch, tokenizer.pad_token_id, work.device)
        q, m = loaded.recipe.quantization, loaded.recipe.model_parameters
        precision = models.resolve_precision(
            m.dtype,
            q.bnb_4bit_compute_dtype,
            device_type=work.device,
            capability=models.device_capability(work.device),
        )
        autocast: Any = (
            torch.autocast("cuda", dtype=precision.dtype)
            if precision.mixed_precision != "no"
            else contextlib.nullcontext()
        )
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        results = []
        for mask in (True, False):
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = token_loss_sum(model, inputs, mask)
            loss.backward()
            norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params if p.grad is not None]))
            results.append((float(loss), float(norm)))
        (loss_masked, grad_masked), (loss_full, grad_full) = results
        loss_diff = abs(loss_masked - loss_full) / max(abs(loss_full), 1e-12)
        grad_diff = abs(grad_masked - grad_full) / max(abs(grad_full), 1e-12)
        if not (loss_diff <= 1e-3 and grad_diff <= 1e-3) or grad_full == 0:
            raise CheckFailed(
                f"loss {loss_masked:.6g} vs {loss_full:.6g} (relative {loss_diff:.1e}), gradient norm "
                f"{grad_masked:.6g} vs {grad_full:.6g} (relative {grad_diff:.1e}); allowed 1e-3"
            )
        return (
            f"{len(batch)} rows: loss {loss_masked:.5f} vs {loss_full:.5f} (relative {loss_diff:.1e}), "
            f"gradient norm relative difference {grad_diff:.1e}"
        )

    checks.run("logits mask: the same loss and gradient as full logits", compare)


def evaluate_batches(checks: Checks, work: Work, recipe: Path, run_dir: Path) -> None:
    """`lora-recipes evaluate` per mode at each batch size: the same predictions."""
    for mode in ("generate", "rank"):

        def same(mode: str = mode) -> str:
            predictions = []
            for size in EVAL_BATCH_SIZES:
                out = work.root / "evals" / f"{mode}-{size}"
                shutil.rmtree(out, ignore_errors=True)  # evaluate resumes into a folder it finds
                work.lora_recipes(
                    "evaluate", str(recipe), "--adapter", str(run_dir), "--output", str(out),
                    "--set", f"evaluation.mode={mode}", "--set", f"evaluation.batch_size={size}",
                )  # fmt: skip
                files = sorted(out.glob("predictions-*.jsonl"))
                if len(files) != 1:
                    raise CheckFailed(f"{out}: {len(files)} prediction files")
                rows = [json.loads(line) for line in files[0].read_text(encoding="utf-8").splitlines() if line]
                predictions.append([r.get("prediction") for r in rows])
            first, *others = predictions
            differ = [sum(a != b for a, b in zip(first, o, strict=False)) + abs(len(first) - len(o)) for o in others]
            if any(differ) or not first:
                raise CheckFailed(f"{len(first)} predictions; {differ} differ between batch sizes {EVAL_BATCH_SIZES}")
            return f"{len(first)} predictions identical at batch sizes {', '.join(map(str, EVAL_BATCH_SIZES))}"

        checks.run(f"evaluate ({mode} mode): batch size 1 = batch size 16", same)


def bench(checks: Checks, work: Work, budget: float, json_dir: Path) -> None:
    """bench_gpu on the Mistral-7B shape: 8 layers at batch 8 and 1, then 32 while time allows."""
    if work.device != "cuda":
        checks.skip("bench_gpu, Mistral-7B shape (8 and 32 layers, batch 8 and 1)", "no CUDA GPU")
        return  # bench_gpu's code path on a CPU: tests/test_scripts.py runs it, and describe_bench on its JSON
    import torch

    memory = torch.cuda.get_device_properties(0).total_memory
    timings: dict[tuple[int, int], float] = {}
    for layers in (8, 32):
        for batch in (8, 1):
            name = f"bench_gpu, Mistral-7B shape, {layers} layers, batch {batch}"
            if layers == 32:
                guess = 4 * timings.get((8, batch), math.inf)  # 4x the layers (batch 8's time includes building)
                if checks.elapsed() + guess > budget:
                    checks.skip(name, f"the time budget ({budget:.0f} s) would run out (about {guess:.0f} s needed)")
                    continue
            need = bench_estimate(layers, batch)
            if need > 0.95 * memory:
                checks.skip(name, f"estimated peak {need / 2**30:.1f} GiB > this GPU's {memory / 2**30:.0f} GiB")
                continue
            start = time.monotonic()
            checks.run(name, functools.partial(bench_once, work, json_dir, layers=layers, batch=batch))
            timings[(layers, batch)] = time.monotonic() - start


def bench_estimate(layers: int, batch: int, max_length: int = 600) -> int:
    from bench_gpu import MISTRAL_7B
    from lora_recipes.model.architectures import from_config, lora_trainable_params
    from lora_recipes.planning.estimate import Method, Workload, peak_memory

    arch = from_config({**MISTRAL_7B, "num_hidden_layers": layers}, "bench")
    assert arch is not None
    trainable = lora_trainable_params(arch, ("q_proj", "v_proj"), 8)
    return peak_memory(arch, Workload(Method(4, True, False), trainable, 0, 0, batch * max_length, "bench"))


def bench_once(work: Work, json_dir: Path, *, layers: int, batch: int) -> str:
    output = json_dir / f"bench_gpu-{layers}l-b{batch}.json"
    command = [sys.executable, str(SCRIPTS / "bench_gpu.py"), "--layers", str(layers), "--batch-size", str(batch)]
    command += ["--steps", "20", "--warmup", "3", "--workdir", str(work.root / "bench"), "--output", str(output)]
    work.run(command)
    return describe_bench(json.loads(output.read_text(encoding="utf-8")))


def describe_bench(record: dict[str, Any]) -> str:
    """One line from bench_gpu's JSON: tokens/s against HF + PEFT, memory against the estimate."""
    results = record["results"]
    ours, hf = results["lora-recipes"], results["hf-trainer"]
    for name, r in results.items():
        if r["steps"] != record["steps"] or not all(math.isfinite(r[k]) for k in ("first_loss", "last_loss")):
            raise CheckFailed(f"{name}: {r['steps']} steps, losses {r['first_loss']} -> {r['last_loss']}")

    def gib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**30:.2f}"

    est = ours["estimate"]
    rate = "" if est["tokens_per_second"] is None else f", estimate {est['tokens_per_second']:,.0f}"
    return (
        f"useful tok/s: ours {ours['useful_tokens_per_second']:,.0f}, HF + PEFT {hf['useful_tokens_per_second']:,.0f} "
        f"({record['ratio']:.2f}x); computed tok/s ours {ours['computed_tokens_per_second']:,.0f}{rate}; "
        f"peak GiB allocated/reserved: ours {gib(ours['peak_vram_bytes'])}/{gib(ours['peak_reserved_bytes'])}, "
        f"HF {gib(hf['peak_vram_bytes'])}/{gib(hf['peak_reserved_bytes'])}, estimate {gib(est['peak_memory_bytes'])}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: cuda when visible")
    parser.add_argument("--budget", type=float, default=540, help="seconds; the 32-layer benchmarks run only within it")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (reused: the bench model is kept)")
    parser.add_argument("--json", type=Path, default=None, help="results file")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps of the tiny model (default {STEPS})")
    parser.add_argument("--stop-at", type=int, default=STOP_AT, help=f"where the second run stops (default {STOP_AT})")
    args = parser.parse_args()

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU is visible (--device cpu runs the checks a CPU can)", file=sys.stderr)
        return 2
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    output = args.json or (
        Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else root / "gpu_check.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(SCRIPTS))  # bench_gpu's shapes
    os.environ["LORA_RECIPES_CACHE"] = str(root / "cache")

    checks = Checks()
    work = Work(root, device)
    capability = environment(checks, device)
    optimizer = "paged_adamw_8bit" if device == "cuda" else "adamw"
    if not 0 < args.stop_at < args.steps:
        parser.error("--stop-at must be above 0 and below --steps")
    recipe = write_task(root, device, optimizer, args.steps)
    if device != "cuda":
        checks.skip("training with the paged optimizer (paged_adamw_8bit)", "no CUDA GPU: adamw instead")
    run_dir = train_and_resume(checks, work, recipe, args.steps, args.stop_at)
    paged_optimizer(checks, device)
    if run_dir is not None:
        logits_mask(checks, work, recipe, run_dir)
        evaluate_batches(checks, work, recipe, run_dir)
    bench(checks, work, args.budget, output.parent)

    where = f"{device}" + (f" (compute capability {capability[0]}.{capability[1]})" if capability else "")
    print(f"\nGPU check on {where}, {checks.elapsed():.0f} s\n")
    print(checks.table())
    failed = checks.failed
    print(f"\n{len(failed)} failed" + (": " + ", ".join(r.check for r in failed) if failed else ""))
    record = {
        "device": device,
        "capability": list(capability) if capability else None,
        "seconds": checks.elapsed(),
        "failed": len(failed),
        "rows": [asdict(r) for r in checks.rows],
    }
    output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
