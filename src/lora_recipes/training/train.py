"""`lora-recipes train`: QLoRA fine-tuning of one recipe into one run directory.

`train()` reads top to bottom as the run goes: devices, run directory and lock, model, data,
optimizer and schedule, resume, then the loop (gradient accumulation, validation, early
stopping, checkpoints, interruption), then the reports. The loop is written out here rather than
delegated to the transformers Trainer: scripts/bench_train.py measures both (this loop is faster
at the same length grouping, mostly because the LM head runs only where there is a loss), and the
loop needs exact per-token loss over accumulated length-grouped batches, exact resume and atomic
run directories, which would be callbacks fighting the Trainer's own bookkeeping.

accelerate supplies the process group: run as is on one device, or data parallel under
`accelerate launch --num_processes N -m lora_recipes train ...` on GPUs (on CPUs:
`accelerate launch --multi_gpu --num_processes N ...` or `torchrun --nproc_per_node N -m ...`,
both over gloo). Each process trains its share of every optimizer step's micro-batches and the
gradients are averaged, so N processes train what one process would with N x the accumulation.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from lora_recipes.data.types import IGNORE_INDEX, PreparedData, TokenizedSplit
from lora_recipes.errors import LoraRecipesError, RuntimeFailure, UserError
from lora_recipes.model import loading as models
from lora_recipes.model.source import ModelSource, load_options, recipe_model_source
from lora_recipes.planning import cost
from lora_recipes.planning.plan import build_plan, resolve_architecture, trainer_steps
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.training import batching, checkpoint, manifest, plots
from lora_recipes.training import run_dir as rundir
from lora_recipes.training.checkpoint import Progress
from lora_recipes.training.metrics_log import METRICS, Reporter, read_metrics

# 4-bit training on a CPU is practical for small models only; above this, ask for a GPU.
CPU_MAX_PARAMS = 2_000_000_000

DataBuilder = Callable[[LoadedRecipe, Any], PreparedData]


@dataclass(frozen=True)
class TrainOptions:
    run_dir: Path | None = None  # None: <output_directory>/<name>-<YYYYmmdd-HHMMSS>
    resume: bool = False  # continue run_dir from its newest checkpoint
    overwrite: bool = False  # empty a non-empty run_dir first
    stop_at_step: int | None = None  # write a checkpoint and stop once this many steps are done
    command_line: tuple[str, ...] = ()
    stream: TextIO | None = None  # progress and messages (stderr by default)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    finished: bool
    interrupted: bool  # stopped by SIGINT/SIGTERM, with a checkpoint written
    report: dict[str, Any] | None  # the cost report when finished
    main_process: bool = True  # False on the other processes of a data-parallel run
    model: Any = None  # the trained model as it ended (the adapter/ folder holds the best one)


def train(loaded: LoadedRecipe, options: TrainOptions, *, build_data: DataBuilder | None = None) -> TrainResult:
    """Train `loaded` (see the module notes). `build_data` replaces the data pipeline (tests)."""
    started = time.monotonic()
    import torch
    from accelerate import Accelerator

    recipe = loaded.recipe
    t = recipe.trainer
    device_type = models.resolve_device(t.device)
    model_dtype = models.resolve_dtype(recipe.model_parameters.dtype, device_type)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model_dtype, "no")
    accelerator = Accelerator(
        cpu=device_type == "cpu",
        mixed_precision=precision if device_type == "cuda" else "no",
        device_placement=False,  # the model is loaded onto its device; batches are moved by collate
    )
    world, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    say = _Say(is_main, options.stream or sys.stderr)
    source = recipe_model_source(loaded)
    _check_cpu_is_enough(loaded, device_type, t.device)

    with contextlib.ExitStack() as hold:
        run_dir = _agree(accelerator, lambda: _open_run_dir(loaded, options, hold))
        models.quiet_transformers()

        # -- model -------------------------------------------------------------------------
        full = recipe.adapter.type == "none"
        tokenizer, model = _load_model(loaded, source, accelerator)
        summary = models.summarize(model)
        say(f"loaded {recipe.base_model}: {_describe_loading(recipe, device_type, world)}; {summary.describe()}")
        logits_mask = models.supports_logits_mask(model)

        # -- data and schedule --------------------------------------------------------------
        with accelerator.main_process_first():  # one process fills the tokenized-data cache
            data = (build_data or _pipeline)(loaded, tokenizer)
        if len(data.train) == 0:
            raise UserError(
                "the training split has no rows left after preparation; check data.dataset and data.max_rows"
            )
        validation = data.validation if data.validation is not None and len(data.validation) else None
        schedule = batching.Schedule(
            tuple(data.train.lengths),
            t.batch_size,
            t.gradient_accumulation_steps,
            world,
            recipe.seed,
            t.group_by_length,
        )
        steps = trainer_steps(t, train_rows=len(data.train), processes=world)
        total = steps.total
        eval_batch = t.eval_batch_size or t.batch_size
        eval_batches = (
            batching.evaluation_batches(validation.lengths, eval_batch, world, rank) if validation is not None else []
        )
        say(_padding_note(schedule, data.train))

        # -- optimizer and learning-rate schedule ---------------------------------------------
        params = [p for p in model.parameters() if p.requires_grad]
        o = t.optimizer
        optimizer = models.build_optimizer(
            params, type=o.type, lr=t.learning_rate, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        warmup = math.ceil(t.learning_rate_scheduler.warmup_fraction * total)
        decay = t.learning_rate_scheduler.decay
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, decay))
        model, optimizer = accelerator.prepare(model, optimizer)
        bare = accelerator.unwrap_model(model)

        # -- fresh start or resume ------------------------------------------------------------
        progress = Progress(world_size=world)
        if options.resume:
            progress = _resume(run_dir, data, bare, optimizer, scheduler, rank, world, say) or progress
        measured: dict[str, Any] = {
            "train_rows": len(data.train),
            "validation_rows": len(validation) if validation is not None else 0,
            "train_tokens_per_epoch": schedule.computed_tokens_per_epoch(),
            "validation_tokens": _validation_tokens(validation, eval_batch),
            "max_length": data.max_length,
            "processes": world,
            "basis": "measured: the prepared data's rows and computed tokens (batches as trained, padding included)",
        }
        plan = build_plan(loaded, data=data.report, **measured)
        for warning in plan["warnings"]:
            say(f"warning: {warning}")
        name = cost.device_name(device_type)
        price = cost.device_price(device_type, name, recipe.cost)
        estimate = plan["estimate"]
        if price.gpu is not None and price.gpu != recipe.cost.gpu:  # compare with the GPU the run is on
            on_this_gpu = replace(loaded, recipe=replace(recipe, cost=replace(recipe.cost, gpu=price.gpu)))
            estimate = build_plan(on_this_gpu, **measured)["estimate"]
        if is_main:
            _write_run_files(run_dir, loaded, plan, data, options, device_type, name, world, source, progress)
        reporter = Reporter(
            run_dir,
            enabled=is_main,
            total_steps=total,
            start_step=progress.step,
            metrics_lines=progress.metrics_lines,
            cost_per_second=price.per_hour_usd * world / 3600,
            report_to=t.report_to,
            run_config=loaded.resolved,
            stream=options.stream,
        )
        hold.callback(reporter.close)
        say(f"training {total:,} steps ({steps.per_epoch:,} per epoch) into {run_dir}")

        # -- the loop -----------------------------------------------------------------------
        stop = hold.enter_context(_stop_signals(say))
        seconds_before, session_start = progress.seconds, started
        session_tokens, session_train_seconds = 0, 0.0
        max_norm = t.gradient_clipping.clipglobalnorm
        interrupted = stopped_here = zero_gradient_told = False
        model.train()
        try:
            while progress.step < total and not progress.stopped_early:
                step_start = time.perf_counter()
                step_batches = schedule.step(progress.step)  # every process's micro-batches
                window = max(sum(batching.label_tokens(b, data.train) for r in step_batches for b in r), 1)
                mine = step_batches[rank]
                loss_sum = 0.0
                for i, batch in enumerate(mine):
                    inputs = batching.collate(data.train, batch, tokenizer.pad_token_id, accelerator.device)
                    # Gradients are averaged over processes only after the step's last micro-batch.
                    sync = contextlib.nullcontext() if i == len(mine) - 1 else accelerator.no_sync(model)
                    with sync:
                        summed = token_loss_sum(model, inputs, logits_mask)
                        # Mean over the answer tokens of the whole step on all processes;
                        # x world undoes the average that data parallelism takes.
                        accelerator.backward(summed * world / window)
                    loss_sum += summed.item()
                grad_norm = accelerator.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1

                loss = _sum_over_processes(accelerator, loss_sum) / window
                real = sum(batching.real_tokens(b, schedule.lengths) for r in step_batches for b in r)
                computed = sum(batching.padded_tokens(b, schedule.lengths) for r in step_batches for b in r)
                seconds = time.perf_counter() - step_start
                progress.tokens_real += real
                progress.tokens_computed += computed
                progress.train_seconds += seconds
                progress.seconds = seconds_before + time.monotonic() - session_start
                session_tokens += real
                session_train_seconds += seconds
                if float(grad_norm) == 0.0 and not zero_gradient_told:
                    zero_gradient_told = True
                    say(f"warning: step {progress.step}: the gradient norm is 0.0; no gradient reached the adapter")
                reporter.record(
                    {
                        "event": "train",
                        "step": progress.step,
                        "epoch": round(progress.step / steps.per_epoch, 4),
                        "loss": loss,
                        "learning_rate": lr,
                        "grad_norm": float(grad_norm),
                        "tokens": real,
                        "computed_tokens": computed,
                        "padding_share": 1 - real / computed,
                        "seconds": seconds,
                    }
                )
                reporter.progress(progress.step, loss, session_tokens / session_train_seconds, progress.seconds)

                last = progress.step == total
                if validation is not None and (progress.step % t.eval_steps == 0 or last):
                    _validate(
                        accelerator, bare, tokenizer, validation, eval_batches, logits_mask, progress, run_dir, full,
                        t.early_stop, reporter, say,
                    )  # fmt: skip
                    model.train()
                interrupted = stop.requested(accelerator)
                stopped_here = options.stop_at_step is not None and progress.step >= options.stop_at_step and not last
                if progress.step % t.steps_per_checkpoint == 0 or ((interrupted or stopped_here) and not last):
                    progress.seconds = seconds_before + time.monotonic() - session_start
                    progress.metrics_lines = reporter.lines
                    checkpoint.save_checkpoint(
                        run_dir,
                        progress,
                        model=bare,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        rank=rank,
                        is_main=is_main,
                        barrier=accelerator.wait_for_everyone,
                        keep=t.checkpoints_to_keep,
                    )
                    if is_main:  # a long run's curve so far
                        plots.plot_losses(read_metrics(run_dir / METRICS), run_dir / "loss.png", loaded.name)
                if (interrupted or stopped_here) and not last:
                    why = "interrupted" if interrupted else f"stopped at step {progress.step} as asked"
                    say(f"{why}; checkpoint written. Continue with: lora-recipes train --resume {run_dir}")
                    return TrainResult(run_dir, progress.step, total, False, interrupted, None, is_main, bare)
        except torch.OutOfMemoryError as exc:
            raise RuntimeFailure(_oom_message(recipe, data.max_length, progress.step)) from exc

        # -- the end: adapter, reports ---------------------------------------------------------
        if progress.stopped_early:
            say(
                f"early stop: {progress.validations_since_best} validations without improvement; keeping the adapter "
                f"of step {progress.best_step} (validation loss {progress.best_validation_loss:.4f})"
            )
        if validation is None and is_main:  # nothing to pick the best by: keep the last weights
            _save_result(run_dir, bare, tokenizer, full)
        accelerator.wait_for_everyone()
        peak = int(
            accelerator.gather(torch.tensor([cost.peak_memory_bytes(device_type)], device=accelerator.device))
            .max()
            .item()
        )
        progress.seconds = seconds_before + time.monotonic() - session_start
        report = cost.cost_report(
            device_type=device_type,
            name=name,
            processes=world,
            price=price,
            wall_seconds=progress.seconds,
            train_seconds=progress.train_seconds,
            tokens_trained=progress.tokens_real,
            tokens_computed=progress.tokens_computed,
            peak_memory=peak,
            total_params=summary.total_params,
            trainable_params=summary.trainable_params,
            steps=progress.step,
            estimate=estimate,
        )
        report["adapter_step"] = progress.best_step if validation is not None else progress.step
        report["best_validation_loss"] = progress.best_validation_loss
        report["stopped_early"] = progress.stopped_early
        if is_main:
            reporter.close()
            plots.plot_losses(read_metrics(run_dir / METRICS), run_dir / "loss.png", loaded.name)
            rundir.write_text_atomic(run_dir / "cost_report.md", cost.render_markdown(report))
            rundir.write_json_atomic(run_dir / "cost_report.json", report)  # last: marks the run finished
        accelerator.wait_for_everyone()
        return TrainResult(run_dir, progress.step, total, True, False, report, is_main, bare)


# -- pieces of the loop ------------------------------------------------------------------------


def token_loss_sum(model: Any, inputs: dict[str, Any], logits_mask: bool) -> Any:
    """Sum of the cross-entropy of every answer token (prompt and padding are not trained).

    With `logits_mask` the LM head runs only at the positions that predict an answer token; for
    short answers (labels, classes) that skips most of a large vocabulary's projection.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[:, 1:]
    if logits_mask:
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != IGNORE_INDEX
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep, use_cache=False
        ).logits
        wanted = targets[keep[:, :-1]]
    else:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        logits, wanted = logits[:, :-1].flatten(0, 1), targets.flatten()
    return F.cross_entropy(logits.float(), wanted, ignore_index=IGNORE_INDEX, reduction="sum")


def lr_factor(step: int, total: int, warmup: int, decay: str) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine, linear or no decay to the end
    (the transformers schedules' formulas)."""
    if step < warmup:
        return step / max(1, warmup)
    if decay == "none":
        return 1.0
    done = (step - warmup) / max(1, total - warmup)
    if decay == "linear":
        return max(0.0, 1.0 - done)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * done)))


def validation_loss(
    accelerator: Any, model: Any, tokenizer: Any, split: TokenizedSplit, batches: list[list[int]], logits_mask: bool
) -> float:
    """Mean answer-token loss over the whole validation split (each process scores its share)."""
    import torch

    model.eval()
    total = 0.0
    count = 0
    with torch.no_grad():
        for batch in batches:
            inputs = batching.collate(split, batch, tokenizer.pad_token_id, accelerator.device)
            total += token_loss_sum(model, inputs, logits_mask).item()
            count += batching.label_tokens(batch, split)
    summed = _sum_over_processes(accelerator, total, count)
    return summed[0] / max(summed[1], 1)


def _validate(
    accelerator: Any,
    model: Any,
    tokenizer: Any,
    split: TokenizedSplit,
    batches: list[list[int]],
    logits_mask: bool,
    progress: Progress,
    run_dir: Path,
    full: bool,
    early_stop: int,
    reporter: Reporter,
    say: Callable[[str], None],
) -> None:
    """Validation loss; a new best is saved as the run's adapter; early stopping is decided."""
    start = time.perf_counter()
    loss = validation_loss(accelerator, model, tokenizer, split, batches, logits_mask)
    best = progress.best_validation_loss is None or loss < progress.best_validation_loss
    if best:
        progress.best_validation_loss, progress.best_step, progress.validations_since_best = loss, progress.step, 0
        if accelerator.is_main_process:
            _save_result(run_dir, model, tokenizer, full)
    else:
        progress.validations_since_best += 1
        # early_stop 0 behaves as 1: stop at the first validation without improvement.
        progress.stopped_early = early_stop >= 0 and progress.validations_since_best >= max(early_stop, 1)
    accelerator.wait_for_everyone()
    reporter.record(
        {
            "event": "validation",
            "step": progress.step,
            "validation_loss": loss,
            "best": best,
            "seconds": time.perf_counter() - start,
        }
    )
    say(f"step {progress.step}: validation loss {loss:.4f}{' (best so far)' if best else ''}")


def _save_result(run_dir: Path, model: Any, tokenizer: Any, full: bool) -> None:
    """The run's product, `adapter/` (or `model/` for full fine-tuning), each file replaced
    atomically."""
    staging = rundir.staging_dir(run_dir, "result")
    models.save_trained(model, tokenizer, staging, full=full)
    rundir.replace_files_from(staging, run_dir / ("model" if full else "adapter"))


def _sum_over_processes(accelerator: Any, *values: float) -> Any:
    """Sum numbers over all processes (one value: a float; several: a list)."""
    if accelerator.num_processes == 1:
        return values[0] if len(values) == 1 else list(values)
    import torch

    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    summed = accelerator.reduce(tensor, reduction="sum").tolist()
    return summed[0] if len(values) == 1 else summed


class _StopRequest:
    def __init__(self) -> None:
        self.flag = False

    def requested(self, accelerator: Any) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        return bool(_sum_over_processes(accelerator, float(self.flag))) if accelerator.num_processes > 1 else self.flag


@contextlib.contextmanager
def _stop_signals(say: Callable[[str], None]) -> Iterator[_StopRequest]:
    """Ctrl-C (SIGINT) or SIGTERM: finish the current optimizer step, write a checkpoint, stop.
    A second Ctrl-C stops at once (the last checkpoint stays)."""
    request = _StopRequest()
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if request.flag:
            raise KeyboardInterrupt
        request.flag = True
        say("stopping after this step to write a checkpoint (Ctrl-C again to quit at once)")

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- set-up helpers ----------------------------------------------------------------------------


class _Say:
    """Messages from the main process only."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled, self.stream = enabled, stream

    def __call__(self, text: str) -> None:
        if self.enabled:
            if self.stream.isatty():
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            self.stream.flush()


def _pipeline(loaded: LoadedRecipe, tokenizer: Any) -> PreparedData:
    from lora_recipes.data.pipeline import prepare_training_data

    return prepare_training_data(loaded, tokenizer)


def _validation_tokens(split: TokenizedSplit | None, batch_size: int) -> int:
    if split is None:
        return 0
    return sum(
        batching.padded_tokens(b, split.lengths) for b in batching.evaluation_batches(split.lengths, batch_size, 1, 0)
    )


def _check_cpu_is_enough(loaded: LoadedRecipe, device_type: str, setting: str) -> None:
    """No GPU, and the recipe left the device to us: train on the CPU only if the model is small."""
    if device_type != "cpu" or setting == "cpu":
        return
    arch = resolve_architecture(loaded)
    if arch is not None and arch.total_params > CPU_MAX_PARAMS:
        bits = loaded.recipe.quantization.bits
        what = f"{bits}-bit QLoRA" if bits else "training"
        raise UserError(
            f"no CUDA GPU is visible, and {what} of {loaded.recipe.base_model} ({arch.total_params / 1e9:.1f}B "
            "parameters) on the CPU would take days. Run on a machine with a GPU, or set trainer.device: cpu "
            "to insist"
        )


def _load_model(loaded: LoadedRecipe, source: ModelSource, accelerator: Any) -> tuple[Any, Any]:
    """Tokenizer and trainable model: the base (quantized per the recipe) prepared for training,
    with fresh LoRA adapters unless the recipe fine-tunes every weight."""
    from accelerate.utils import set_seed

    recipe = loaded.recipe
    m, q, t = recipe.model_parameters, recipe.quantization, recipe.trainer
    with accelerator.main_process_first():  # a GGUF base is converted once, by one process
        tokenizer = models.load_tokenizer(source, revision=m.revision, trust_remote_code=m.trust_remote_code)
        model = models.load_base_model(source, **load_options(loaded), device=str(accelerator.device))
    model = models.prepare_for_training(
        model, quantized=q.bits is not None, gradient_checkpointing=t.enable_gradient_checkpointing
    )
    set_seed(recipe.seed)  # LoRA initialisation and dropout
    if recipe.adapter.type == "lora":
        a = recipe.adapter
        model = models.attach_lora(
            model, r=a.r, alpha=a.alpha, dropout=a.dropout, target_modules=a.target_modules, bias=a.bias
        )
    return tokenizer, model


def _describe_loading(recipe: Any, device_type: str, world: int) -> str:
    q = recipe.quantization
    if q.bits == 4:
        double = ", double quantization" if q.bnb_4bit_use_double_quant else ""
        weights = f"4-bit {q.bnb_4bit_quant_type}{double}, {q.bnb_4bit_compute_dtype} compute"
    elif q.bits == 8:
        weights = "8-bit"
    else:
        weights = f"{recipe.model_parameters.dtype} weights"
    what = "full fine-tuning" if recipe.adapter.type == "none" else f"LoRA r={recipe.adapter.r}"
    on = f"{device_type} x {world}" if world > 1 else device_type
    return f"{weights}, {what}, on {on}"


def _padding_note(schedule: batching.Schedule, split: TokenizedSplit) -> str:
    grouped = schedule.computed_tokens_per_epoch()
    real = sum(split.lengths)
    plain = replace(schedule, group_by_length=False, _epochs={}).computed_tokens_per_epoch()
    how = "length-grouped batches" if schedule.group_by_length else "batches in random order"
    note = f"{how}: {100 * (1 - real / grouped):.1f}% of computed tokens are padding"
    if schedule.group_by_length:
        note += f" ({100 * (1 - real / plain):.1f}% without grouping)"
    return note


def _open_run_dir(loaded: LoadedRecipe, options: TrainOptions, hold: contextlib.ExitStack) -> Path:
    """Choose and check the run directory and take its lock (main process only)."""
    if options.resume:
        assert options.run_dir is not None
        run_dir = options.run_dir
        rundir.check_resumable(run_dir)
    else:
        run_dir = options.run_dir or rundir.new_run_dir_name(loaded.name, Path(loaded.recipe.output_directory))
        rundir.check_new_run_dir(run_dir, overwrite=options.overwrite)
    hold.enter_context(rundir.run_lock(run_dir))
    if not options.resume:  # first, so that a run killed while loading can be resumed
        rundir.write_text_atomic(run_dir / rundir.RESOLVED_RECIPE, rundir.resolved_recipe_text(loaded))
    return run_dir.resolve()


def _agree(accelerator: Any, decide: Callable[[], Path]) -> Path:
    """Run `decide` on the main process and give every process its result, or its error (so a
    refused run directory stops all processes, not just the first)."""
    outcome: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            outcome = [("ok", str(decide()))]
        except LoraRecipesError as exc:
            outcome = [("error", exc.exit_code, str(exc))]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome)
    kind, *rest = outcome[0]
    if kind == "error":
        code, message = rest
        raise (UserError if code == UserError.exit_code else RuntimeFailure)(message)
    return Path(rest[0])


def _resume(
    run_dir: Path,
    data: PreparedData,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    rank: int,
    world: int,
    say: Callable[[str], None],
) -> Progress | None:
    import json

    path = run_dir / "manifest.json"
    recorded = json.loads(path.read_text(encoding="utf-8"))["data_hashes"] if path.is_file() else {}
    if recorded and recorded != data.split_hashes:
        changed = sorted(
            k for k in set(recorded) | set(data.split_hashes) if recorded.get(k) != data.split_hashes.get(k)
        )
        raise UserError(
            f"--resume {run_dir}: the data changed since the run started ({', '.join(changed)}); resuming would not "
            "continue the same training. Restore the data or start a new run"
        )
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is None:
        say(f"{run_dir} has no checkpoint yet: starting it from the beginning")
        return None
    progress = checkpoint.load_checkpoint(
        latest, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank, world_size=world
    )
    say(f"resuming from {latest.relative_to(run_dir)} (step {progress.step:,})")
    return progress


def _write_run_files(
    run_dir: Path,
    loaded: LoadedRecipe,
    plan: dict[str, Any],
    data: PreparedData,
    options: TrainOptions,
    device_type: str,
    name: str,
    world: int,
    source: ModelSource,
    progress: Progress,
) -> None:
    """plan.json and manifest.json (a resumed run adds a session to its manifest)."""
    import datetime as dt
    import json

    session = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command_line": list(options.command_line),
        "from_step": progress.step,
    }
    path = run_dir / "manifest.json"
    if options.resume and path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
    else:
        rundir.write_json_atomic(run_dir / "plan.json", plan)
        record = manifest.build_manifest(
            seed=loaded.recipe.seed,
            split_hashes=data.split_hashes,
            device=device_type,
            device_name=name,
            processes=world,
            base_model=loaded.recipe.base_model,
            model_location=source.describe(),
            command_line=list(options.command_line),
        )
    record["sessions"].append(session)
    rundir.write_json_atomic(path, record)


def _oom_message(recipe: Any, max_length: int, step: int) -> str:
    t = recipe.trainer
    return (
        f"out of memory at step {step + 1}. Lower trainer.batch_size (now {t.batch_size}; raise "
        f"trainer.gradient_accumulation_steps to keep the effective batch), the max length "
        f"(preprocessing.global_max_sequence_length, now {max_length} tokens), or set "
        f"trainer.enable_gradient_checkpointing: true (now {str(t.enable_gradient_checkpointing).lower()}). "
        "Continue from the last checkpoint with --resume"
    )


def train_command(
    recipe: Path | None,
    overrides: list[str],
    data_path: str | None,
    *,
    run_dir: Path | None,
    resume: Path | None,
    overwrite: bool,
    stop_at_step: int | None,
    command_line: tuple[str, ...],
) -> TrainResult:
    """What `lora-recipes train` does once its options are parsed."""
    from lora_recipes.recipe.loader import load_recipe

    if resume is not None:
        extra = [
            name
            for name, given in (
                ("RECIPE", recipe is not None),
                ("--set", bool(overrides)),
                ("--data", data_path is not None),
                ("--run-dir", run_dir is not None),
                ("--overwrite", overwrite),
            )
            if given
        ]
        if extra:
            raise UserError(
                f"--resume continues a run with the recipe it started with ({resume / rundir.RESOLVED_RECIPE}); "
                f"leave out {', '.join(extra)}"
            )
        loaded = rundir.load_run_recipe(resume)
        options = TrainOptions(run_dir=resume, resume=True, stop_at_step=stop_at_step, command_line=command_line)
    else:
        if recipe is None:
            raise UserError("give a RECIPE file to train, or --resume RUN_DIR to continue a run")
        loaded = load_recipe(recipe, overrides, data_path)
        options = TrainOptions(
            run_dir=run_dir, overwrite=overwrite, stop_at_step=stop_at_step, command_line=command_line
        )
    return train(loaded, options)
