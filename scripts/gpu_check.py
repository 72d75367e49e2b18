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
   continued with `--resume`: the 20 losses, the validation losses and the gradient norms equal
   the straight run's (exactly on a CPU; within 1e-5 relative on CUDA, where the training runs use
   deterministic kernels: see DETERMINISTIC_TRAIN); the gradient norm is above zero at every step
   of both (below compute capability 8.0, where the runs take fp16 with loss scaling, a step the
   GradScaler skips has no norm and is counted, not failed);
3. bitsandbytes' paged optimizers page a 200,000-element tensor's state and not a 32,768-element one
   (the threshold trainer.optimizer.type's description gives), before and after a resume reloads
   the state; CUDA only;
4. fp16 with loss scaling (a GradScaler), the path `auto` takes on T4 and V100, on any CUDA GPU: the
   tiny 4-bit model with `model_parameters.dtype` and `quantization.bnb_4bit_compute_dtype` float16
   trained 6 steps straight, and stopped at step 3 and resumed (every loss finite, every recorded
   gradient norm above zero, the resumed run equal to the straight one: the loss scale is in the
   checkpoint), and a 4-step full fine-tuning (`adapter.type: none`, `quantization.bits: null`) in
   float16, which fails if the GradScaler meets float16 gradients ("Attempting to unscale FP16
   gradients"); CUDA only;
5. one batch through the trained adapter with and without the logits mask (the LM head only where
   the loss is): loss and gradient norm agree within 1e-3 relative;
6. `lora-recipes evaluate` in generate and rank modes at batch sizes 1 and 16: the same
   predictions at both batch sizes;
7. scripts/bench_gpu.py on the Mistral-7B shape with random weights, 8 layers, at batch sizes 8
   and 1, against HF Trainer + PEFT, with peak allocated and reserved memory beside the estimate;
   then all 32 layers at the same batch sizes while the time budget (--budget) allows. A size is
   skipped when its estimated peak memory exceeds 95% of the GPU's: the larger of the 4-bit
   training estimate and, while its model folder is not built yet, building the random model
   (every weight in bfloat16 on the GPU, before quantization; 14.5 GB at 32 layers, so a 16 GB
   T4 skips 32 layers). CUDA only (tests/test_scripts.py runs bench_gpu's code path on a CPU at
   toy width and reads its JSON with `describe_bench`).

On a CPU the CUDA steps are marked skipped and the rest run as on a GPU (the test suite runs it with
--steps 4 --stop-at 2 to stay near two minutes).

Training and evaluation run as users run them: `python -m lora_recipes ...` in subprocesses (on
CUDA, training through DETERMINISTIC_TRAIN, which sets torch's deterministic mode first).
The script runs from a checkout without installing lora-recipes (it puts src/ on the path when the
package is not installed), given torch, transformers, peft, bitsandbytes and accelerate.
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
import re
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
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))  # bench_gpu: its shapes and memory need

STEPS, STOP_AT = 20, 8  # --steps, --stop-at (fewer for the test suite's CPU run)
EVAL_BATCH_SIZES = (1, 16)
FP16_STEPS, FP16_STOP_AT, FULL_STEPS = 6, 3, 4  # the fp16 checks' runs (check 4)
MEMORY_SHARE = 0.95  # of the GPU's memory an estimated peak may take before a bench size is skipped

# Resume on CUDA: the losses, validation losses and gradient norms of the stopped-and-resumed run
# against the straight run's. On a CPU they are equal to the bit. On CUDA the training runs go
# through this launcher, which makes torch's own kernels deterministic: cuBLAS with a fixed
# workspace (CUBLAS_WORKSPACE_CONFIG, set in Work), torch's deterministic mode, and the math
# attention kernel, since with warn_only torch leaves the flash and memory-efficient attention
# backward passes non-deterministic (they add partial gradients with atomics). warn_only keeps a run
# going through an op that has no deterministic version; torch then warns, and the check's detail
# names the op. bitsandbytes' kernels on this path (4-bit dequantization before a cuBLAS matmul, the
# 8-bit paged optimizer's block-wise update) are outside torch's switch and are expected, not yet
# shown, to repeat to the bit. With every kernel deterministic the two runs agree to the bit; 1e-5
# relative is a margin for rounding only, where the 1e-2 allowed before covered sums in an
# undetermined order. If a GPU run exceeds it, the detail names the largest differences (losses and
# gradient norms) and the ops torch warned about: a bitsandbytes kernel is the suspect when torch
# warned of none. Below compute capability 8.0 the runs take fp16 with loss scaling; the
# GradScaler's scale is in the checkpoint, so a resumed run skips the steps the straight run
# skipped, and those steps (no gradient norm) must match too. Uninitialised memory is left as it
# is outside deterministic mode (not filled with NaN).
DETERMINISTIC_TRAIN = "\n".join(
    (
        "import runpy, torch, torch.utils.deterministic",
        "torch.use_deterministic_algorithms(True, warn_only=True)",
        "torch.utils.deterministic.fill_uninitialized_memory = False",
        "torch.backends.cuda.enable_flash_sdp(False)",
        "torch.backends.cuda.enable_mem_efficient_sdp(False)",
        "torch.backends.cuda.enable_cudnn_sdp(False)",
        "runpy.run_module('lora_recipes', run_name='__main__', alter_sys=True)",
    )
)
RESUME_TOLERANCE_CUDA = 1e-5
NONDETERMINISTIC = re.compile(
    r"Warning: (.{1,80}?) (?:does not have a deterministic implementation|defaults to a non-deterministic algorithm)"
)
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
        if device == "cuda":
            self.env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS's deterministic setting (DETERMINISTIC_TRAIN)
        self.nondeterministic: set[str] = set()  # ops torch warned about in training runs

    def run(
        self, command: list[str], timeout: float = 600, name: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `command`; a failure is a CheckFailed naming it (`name`, else its first arguments)."""
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.root)
        if done.returncode != 0:
            tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-3:]
            what = name or f"{' '.join(command[1:4])} ..."
            raise CheckFailed(f"{what} exited {done.returncode}: {' / '.join(tail)[-600:]}")
        return done

    def lora_recipes(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "lora_recipes", *args])

    def train(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`lora-recipes train ARGS`; on CUDA with deterministic kernels (DETERMINISTIC_TRAIN)."""
        if self.device != "cuda":
            return self.lora_recipes("train", *args)
        command = [sys.executable, "-c", DETERMINISTIC_TRAIN, "train", *args]
        done = self.run(command, name=f"-m lora_recipes train {' '.join(args[:2])} ... (deterministic)")
        self.nondeterministic.update(NONDETERMINISTIC.findall(done.stderr))
        return done


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


def max_relative_difference(a: list[float | None], b: list[float | None]) -> float:
    """The largest relative difference of two series; None (a step fp16 loss scaling skipped, which
    has no gradient norm) equals only None."""
    if len(a) != len(b):
        return math.inf

    def difference(x: float | None, y: float | None) -> float:
        if x is None or y is None:
            return 0.0 if x is y else math.inf
        return abs(x - y) / max(abs(y), 1e-12)

    return max((difference(x, y) for x, y in zip(a, b, strict=True)), default=0.0)


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


def train_and_resume(
    checks: Checks, work: Work, recipe: Path, steps: int, stop_at: int, *, scaled: bool = False
) -> Path | None:
    """The straight run, the stopped-and-resumed run, and their losses and gradient norms
    (`scaled`: the runs take fp16 with loss scaling, whose skipped steps have no gradient norm)."""
    straight, stopped = work.root / "runs" / "straight", work.root / "runs" / "stopped"
    optimizer = json.loads(recipe.read_text())["trainer"]["optimizer"]["type"]
    what = f"4-bit NF4, gradient checkpointing, {optimizer}"

    def train_straight() -> str:
        work.train(str(recipe), "--run-dir", str(straight), "--overwrite")
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
        first = work.train(str(recipe), "--run-dir", str(stopped), "--overwrite", "--stop-at-step", str(stop_at))
        if f"stopped at step {stop_at}" not in first.stdout + first.stderr:
            raise CheckFailed(f"--stop-at-step {stop_at} did not stop there")
        work.train("--resume", str(stopped))
        tolerance = 0.0 if work.device == "cpu" else RESUME_TOLERANCE_CUDA
        resumed, plain = metrics(stopped, "train"), metrics(straight, "train")
        differences = {
            "loss": max_relative_difference([r["loss"] for r in resumed], [r["loss"] for r in plain]),
            "gradient norm": max_relative_difference(
                [r.get("grad_norm") for r in resumed], [r.get("grad_norm") for r in plain]
            ),
            "validation loss": max_relative_difference(
                [r["validation_loss"] for r in metrics(stopped, "validation")],
                [r["validation_loss"] for r in metrics(straight, "validation")],
            ),
        }
        worst = max(differences.values())
        if worst > tolerance or len(resumed) != steps:
            each = ", ".join(f"{name} {value:.2e}" for name, value in differences.items())
            warned = sorted(work.nondeterministic)
            why = f"; torch warned of non-deterministic kernels: {', '.join(warned)}" if warned else ""
            raise CheckFailed(
                f"{len(resumed)} losses; largest relative differences {each} (allowed {tolerance:g}){why}"
            )
        return (
            f"stopped at {stop_at}, resumed to {steps}: losses, validation losses and gradient norms equal "
            f"(largest relative difference {worst:.1e})"
        )

    checks.run(f"stop at step {stop_at} and --resume: same losses", stop_and_resume)

    def grad_norms() -> str:
        recorded = [r.get("grad_norm") for run in (straight, stopped) if run.is_dir() for r in metrics(run, "train")]
        norms = [n for n in recorded if n is not None]
        skipped = len(recorded) - len(norms)  # null: a step fp16 loss scaling skipped (an overflow)
        bad = [n for n in norms if not (math.isfinite(n) and n > 0)]
        if bad or not norms or (skipped and not scaled):
            raise CheckFailed(
                f"{len(bad)} of {len(recorded)} steps have a gradient norm that is 0 or not finite"
                + (f", {skipped} have none" if skipped else "")
            )
        skips = f"; {skipped} skipped by loss scaling" if skipped else ""
        return f"{len(norms)} steps, smallest {min(norms):.3g}{skips}"

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

        from lora_recipes.model.loading import PAGED_MIN_ELEMENTS, build_optimizer, load_optimizer_state

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
            load_optimizer_state(optimizer, optimizer.state_dict())  # what a resume does
            optimizer.step()
            again = [bool(getattr(optimizer.state[p]["state1"], "is_paged", False)) for p in (big, small)]
            if again != [True, False]:
                raise CheckFailed(f"{kind} after a resume: paged (200,000 elements, 32,768 elements) = {again}")
            found.append(kind)
            del optimizer
        bnb_version = bnb.__version__
        return (
            f"{' and '.join(found)} (bitsandbytes {bnb_version}): 200,000 elements paged, 32,768 not, "
            "and the same after a resume"
        )

    checks.run(name, paged)


def fp16_loss_scaling(checks: Checks, work: Work, recipe: Path) -> None:
    """fp16 with a GradScaler, the path `auto` takes below compute capability 8.0 (T4, V100), asked
    for explicitly so that any CUDA GPU runs it: 4-bit LoRA stopped and resumed, and full
    fine-tuning, whose float16 weights a GradScaler could not unscale (they are kept in float32)."""
    lora = f"fp16 and loss scaling, 4-bit LoRA: {FP16_STEPS} steps straight, and stopped at {FP16_STOP_AT} and resumed"
    full = f"fp16 and loss scaling, full fine-tuning (adapter.type none, {FULL_STEPS} steps)"
    if work.device != "cuda":
        checks.skip(lora, "no CUDA GPU")
        checks.skip(full, "no CUDA GPU")
        return

    def sets(*values: str) -> list[str]:
        return [arg for value in values for arg in ("--set", value)]

    def finite_run(run: Path, steps: int) -> tuple[list[float], list[float], int]:
        """The run's losses and recorded gradient norms (a step the GradScaler skips has none),
        with every loss finite and every recorded norm above zero."""
        rows = metrics(run, "train")
        losses = [r["loss"] for r in rows] + [r["validation_loss"] for r in metrics(run, "validation")]
        recorded = [r.get("grad_norm") for r in rows]
        norms = [n for n in recorded if n is not None]
        if len(rows) != steps or not all(math.isfinite(x) for x in losses):
            raise CheckFailed(f"{len(rows)} steps of {steps}; losses {', '.join(f'{x:.4g}' for x in losses)}")
        if not norms or not all(math.isfinite(n) and n > 0 for n in norms):
            raise CheckFailed(f"gradient norms {recorded}: none recorded, or one 0 or not finite")
        return [r["loss"] for r in rows], norms, len(recorded) - len(norms)

    def skipped(count: int) -> str:
        return f", {count} step{'s' if count != 1 else ''} skipped by loss scaling" if count else ""

    def lora_fp16() -> str:
        straight, run = work.root / "runs" / "fp16-straight", work.root / "runs" / "fp16-lora"
        values = ("model_parameters.dtype=float16", "quantization.bnb_4bit_compute_dtype=float16")
        args = [str(recipe), *sets(*values, f"trainer.train_steps={FP16_STEPS}")]
        work.train(*args, "--run-dir", str(straight), "--overwrite")
        first = work.train(*args, "--run-dir", str(run), "--overwrite", "--stop-at-step", str(FP16_STOP_AT))
        said = first.stdout + first.stderr
        if f"stopped at step {FP16_STOP_AT}" not in said or "float16 compute" not in said:
            raise CheckFailed(f"not stopped at step {FP16_STOP_AT} in float16: {said.strip().splitlines()[-3:]}")
        work.train("--resume", str(run))
        losses, norms, skips = finite_run(run, FP16_STEPS)
        # The loss scale is checkpointed: the resumed run skips the steps the straight one skipped.
        resumed, plain = metrics(run, "train"), metrics(straight, "train")
        worst = max(
            max_relative_difference([r["loss"] for r in resumed], [r["loss"] for r in plain]),
            max_relative_difference([r.get("grad_norm") for r in resumed], [r.get("grad_norm") for r in plain]),
        )
        if worst > RESUME_TOLERANCE_CUDA:
            raise CheckFailed(
                f"resumed and straight runs differ: largest relative difference {worst:.2e} "
                f"(allowed {RESUME_TOLERANCE_CUDA:g}); grad norms {[r.get('grad_norm') for r in resumed]} "
                f"against {[r.get('grad_norm') for r in plain]}"
            )
        return (
            f"float16 weights and 4-bit compute: loss {losses[0]:.4f} -> {losses[-1]:.4f}, all finite; "
            f"gradient norm above zero at {len(norms)} steps{skipped(skips)}; resumed = straight "
            f"(largest relative difference {worst:.1e})"
        )

    def full_fp16() -> str:
        run = work.root / "runs" / "fp16-full"
        values = ("adapter.type=none", "quantization.bits=null", "model_parameters.dtype=float16")
        done = work.train(
            str(recipe), *sets(*values, f"trainer.train_steps={FULL_STEPS}"), "--run-dir", str(run), "--overwrite"
        )
        if "kept in float32" not in done.stdout + done.stderr:  # resolve_precision's note for this case
            raise CheckFailed("no note that the float16 weights are kept in float32 for loss scaling")
        losses, norms, skips = finite_run(run, FULL_STEPS)
        return (
            f"float32 master weights, float16 autocast: loss {losses[0]:.4f} -> {losses[-1]:.4f}, all finite; "
            f"gradient norm above zero at {len(norms)} steps{skipped(skips)}"
        )

    checks.run(lora, lora_fp16)
    checks.run(full, full_fp16)  # "Attempting to unscale FP16 gradients" would end the run: its tail is the detail


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
            results.append((float(loss.detach()), float(norm)))
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
            too_big = memory_shortfall(work.root / "bench", layers, batch, memory)
            if too_big:
                checks.skip(name, too_big)
                continue
            start = time.monotonic()
            checks.run(name, functools.partial(bench_once, work, json_dir, layers=layers, batch=batch))
            timings[(layers, batch)] = time.monotonic() - start


def memory_shortfall(workdir: Path, layers: int, batch: int, memory: int) -> str | None:
    """Why a bench size does not fit a GPU of `memory` bytes, or None when it fits: the 4-bit
    training estimate and, while the random model is not built in `workdir`, building it (whole,
    in bfloat16, on the GPU) each within MEMORY_SHARE of the memory."""
    from bench_gpu import MISTRAL_7B, build_memory, model_folder

    train = bench_estimate(layers, batch)
    built = (model_folder(workdir, layers) / "config.json").is_file()
    build = 0 if built else build_memory({**MISTRAL_7B, "num_hidden_layers": layers})
    if max(train, build) <= MEMORY_SHARE * memory:
        return None
    parts = f"4-bit training {train / 2**30:.1f} GiB" + (
        f", building in bfloat16 {build / 2**30:.1f} GiB" if build else ""
    )
    return f"estimated peak {max(train, build) / 2**30:.1f} GiB ({parts}) > {MEMORY_SHARE:.0%} of this GPU's {memory / 2**30:.1f} GiB"


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
    from lora_recipes.model.loading import BF16_CAPABILITY

    scaled = capability is not None and capability < BF16_CAPABILITY  # auto takes fp16 with loss scaling
    run_dir = train_and_resume(checks, work, recipe, args.steps, args.stop_at, scaled=scaled)
    paged_optimizer(checks, device)
    fp16_loss_scaling(checks, work, recipe)
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
