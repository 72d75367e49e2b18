"""`lora-recipes train`: QLoRA fine-tuning of one recipe into one run directory.

The run is a recipe in named phases, in the order they happen (`train()` reads as that list):

1. set-up: the accelerator (`_start_accelerator`), the run directory and its lock
   (`_open_run_dir`), the model (`_set_up_model`), the data and its schedule (`_set_up_data`), the
   optimizer and learning-rate schedule (`_set_up_optimizer`), a resumed run's checkpoint
   (`_resume`), then the plan and the run's files (`_plan_and_record`) and its logs;
2. the step: `step.train_step`, one optimizer step with no I/O (forward and backward over the
   step's micro-batches, clipping, the optimizer and schedule step);
3. the loop: `_loop` decides when to validate, write a checkpoint and stop (the last step, early
   stopping, Ctrl-C or --stop-at-step);
4. the finish: the adapter, the cost report and the loss plot (`_finish`).

The loop is written out here rather than delegated to the transformers Trainer:
scripts/bench_train.py measures both (this loop is faster at the same length grouping, mostly
because the LM head runs only where there is a loss), and the loop needs exact per-token loss over
accumulated length-grouped batches, exact resume and atomic run directories, which would be
callbacks fighting the Trainer's own bookkeeping.

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
from typing import TYPE_CHECKING, Any, Literal, TextIO

from lora_recipes.data.types import PreparedData, TokenizedSplit
from lora_recipes.errors import LoraRecipesError, RuntimeFailure, UserError
from lora_recipes.model import loading as models
from lora_recipes.model.source import ModelSource, load_options, recipe_model_source
from lora_recipes.planning.plan import Steps, resolve_architecture, trainer_steps
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.recipe.types import Recipe, Trainer
from lora_recipes.training import batching, checkpoint, manifest, plots
from lora_recipes.training import run_dir as rundir
from lora_recipes.training.checkpoint import TrainingState
from lora_recipes.training.metrics_log import MetricsLog, ProgressLine, read_metrics
from lora_recipes.training.run_dir import RunLayout
from lora_recipes.training.run_plan import Measured, RunPlan, cost_report, peak_memory, plan_run, render_cost_report
from lora_recipes.training.step import (
    StepResult,
    Trainables,
    TrainingData,
    lr_factor,
    sum_over_processes,
    train_step,
)
from lora_recipes.training.validation import ValidationData, judge, validation_loss

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from lora_recipes.model.loading import ModelSummary

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
    model: torch.nn.Module | None = None  # the trained model as it ended (adapter/ holds the best one)


# -- the state the phases hand on ----------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """What every phase works in: the process group, the run directory, the voice of the run."""

    accelerator: Accelerator
    device_type: str  # cuda or cpu
    layout: RunLayout
    say: Callable[[str], None]  # a message from the main process
    name: str  # the recipe's name (the loss plot's title)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)


@dataclass(frozen=True)
class LoadedModel:
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module  # quantized per the recipe, prepared for training, with fresh adapters
    summary: ModelSummary
    logits_mask: bool  # the model computes logits only where asked (see step.token_loss_sum)
    full: bool  # full fine-tuning: the result is model/, not adapter/


@dataclass(frozen=True)
class RunData:
    prepared: PreparedData
    train: TrainingData
    validation: ValidationData | None  # None: no validation split (the last weights are the result)
    steps: Steps
    measured: Measured  # for the plan


@dataclass(frozen=True)
class Cadence:
    """When the loop validates, writes checkpoints and stops."""

    steps: Steps
    eval_steps: int
    steps_per_checkpoint: int
    checkpoints_to_keep: int
    early_stop: int  # validations without improvement before stopping; -1: never
    stop_at_step: int | None  # --stop-at-step


@dataclass(frozen=True)
class Logs:
    metrics: MetricsLog
    progress_line: ProgressLine

    def close(self) -> None:
        self.progress_line.close()
        self.metrics.close()


@dataclass(frozen=True)
class Run:
    """Everything the loop and the finish work with."""

    session: Session
    model: LoadedModel
    trainables: Trainables
    data: RunData
    cadence: Cadence
    logs: Logs


@dataclass
class Clock:
    """This session's time and throughput (earlier sessions of a resumed run are in
    TrainingState.seconds)."""

    started: float  # time.monotonic() when this session began
    seconds_before: float  # the run's wall time before this session
    tokens: int = 0  # non-padding tokens trained in this session
    train_seconds: float = 0.0  # of which in training steps
    told_zero_gradient: bool = False

    def run_seconds(self) -> float:
        """The run's wall time so far, earlier sessions included."""
        return self.seconds_before + time.monotonic() - self.started


Ending = Literal["finished", "interrupted", "stopped"]


# -- the run -----------------------------------------------------------------------------------------


def train(loaded: LoadedRecipe, options: TrainOptions, *, build_data: DataBuilder | None = None) -> TrainResult:
    """Train `loaded` (see the module notes). `build_data` replaces the data pipeline (tests)."""
    started = time.monotonic()
    recipe, t = loaded.recipe, loaded.recipe.trainer
    accelerator, device_type = _start_accelerator(t.device, recipe.model_parameters.dtype)
    say = _Say(accelerator.is_main_process, options.stream or sys.stderr)
    source = recipe_model_source(loaded)
    _check_cpu_is_enough(loaded, device_type, t.device)

    with contextlib.ExitStack() as hold:
        run_dir = _agree(accelerator, lambda: _open_run_dir(loaded, options, hold))
        session = Session(accelerator, device_type, RunLayout(run_dir), say, loaded.name)
        model = _set_up_model(loaded, source, session)
        prepare = build_data or _pipeline
        data = _set_up_data(
            session, lambda: prepare(loaded, model.tokenizer), t, recipe.seed, model.tokenizer.pad_token_id
        )
        trainables = _set_up_optimizer(session, model, t, data.steps.total)
        state = TrainingState(world_size=accelerator.num_processes)
        if options.resume:
            state = _resume(session, data.prepared.split_hashes, trainables) or state
        planned = plan_run(loaded, data.prepared.report, data.measured, device_type)
        for warning in planned.warnings:
            say(f"warning: {warning}")
        if session.is_main:
            origin = manifest.Origin(
                recipe.seed, data.prepared.split_hashes, recipe.base_model, source.describe(), options.command_line
            )
            _write_run_files(session.layout, planned, options, origin, state.step)
        logs = _open_logs(session, loaded, options, state, data.steps.total, planned.cost_per_second)
        hold.callback(logs.close)
        say(f"training {data.steps.total:,} steps ({data.steps.per_epoch:,} per epoch) into {run_dir}")

        cadence = Cadence(
            data.steps, t.eval_steps, t.steps_per_checkpoint, t.checkpoints_to_keep, t.early_stop, options.stop_at_step
        )
        run = Run(session, model, trainables, data, cadence, logs)
        stop = hold.enter_context(_stop_signals(say))
        clock = Clock(started, state.seconds)
        import torch

        try:
            ending = _loop(run, state, clock, stop)
        except torch.OutOfMemoryError as exc:
            raise RuntimeFailure(_oom_message(recipe, data.prepared.max_length, state.step)) from exc
        if ending != "finished":
            return _result(run, state, None, interrupted=ending == "interrupted")
        return _finish(run, state, clock, planned)


def _loop(run: Run, state: TrainingState, clock: Clock, stop: _StopRequest) -> Ending:
    """Optimizer steps until the last, an early stop, or a stop that was asked for (a signal, or
    --stop-at-step); validation and checkpoints on their cadence."""
    session, cadence, total = run.session, run.cadence, run.cadence.steps.total
    run.trainables.model.train()
    while state.step < total and not state.stopped_early:
        step_start = time.perf_counter()
        result = train_step(session.accelerator, run.trainables, run.data.train, state.step)
        state.step += 1
        _count_step(run, state, clock, result, time.perf_counter() - step_start)

        last = state.step == total
        if run.data.validation is not None and (state.step % cadence.eval_steps == 0 or last):
            _validate(run, state, run.data.validation)
            run.trainables.model.train()
        interrupted = stop.requested(session.accelerator)
        stopped_here = cadence.stop_at_step is not None and state.step >= cadence.stop_at_step and not last
        if state.step % cadence.steps_per_checkpoint == 0 or ((interrupted or stopped_here) and not last):
            _checkpoint(run, state, clock)
        if (interrupted or stopped_here) and not last:
            why = "interrupted" if interrupted else f"stopped at step {state.step} as asked"
            session.say(f"{why}; checkpoint written. Continue with: lora-recipes train --resume {session.layout.root}")
            return "interrupted" if interrupted else "stopped"
    return "finished"


def _finish(run: Run, state: TrainingState, clock: Clock, planned: RunPlan) -> TrainResult:
    """The result folder (the last weights when there is no validation to pick the best by), the
    cost report and the loss plot."""
    session, validated = run.session, run.data.validation is not None
    if state.stopped_early:
        session.say(
            f"early stop: {state.validations_since_best} validations without improvement; keeping the adapter "
            f"of step {state.best_step} (validation loss {state.best_validation_loss:.4f})"
        )
    if not validated and session.is_main:  # nothing to pick the best by: keep the last weights
        _save_result(run)
    session.accelerator.wait_for_everyone()
    peak = peak_memory(session.accelerator, session.device_type)
    state.seconds = clock.run_seconds()
    report = cost_report(planned, state, run.model.summary, peak, state.best_step if validated else state.step)
    if session.is_main:
        run.logs.close()
        _plot(session)
        layout = session.layout
        rundir.write_text_atomic(layout.cost_report_md, render_cost_report(report))
        rundir.write_json_atomic(layout.cost_report_json, report)  # last: marks the run finished
    session.accelerator.wait_for_everyone()
    return _result(run, state, report, interrupted=False)


def _result(run: Run, state: TrainingState, report: dict[str, Any] | None, *, interrupted: bool) -> TrainResult:
    return TrainResult(
        run_dir=run.session.layout.root,
        step=state.step,
        total_steps=run.cadence.steps.total,
        finished=report is not None,
        interrupted=interrupted,
        report=report,
        main_process=run.session.is_main,
        model=run.trainables.bare,
    )


# -- what the loop does between steps ----------------------------------------------------------------


def _count_step(run: Run, state: TrainingState, clock: Clock, result: StepResult, seconds: float) -> None:
    """Add a finished step to the counters, metrics.jsonl and the progress line."""
    state.tokens_real += result.tokens_real
    state.tokens_computed += result.tokens_computed
    state.train_seconds += seconds
    state.seconds = clock.run_seconds()
    clock.tokens += result.tokens_real
    clock.train_seconds += seconds
    if result.grad_norm == 0.0 and not clock.told_zero_gradient:
        clock.told_zero_gradient = True
        run.session.say(f"warning: step {state.step}: the gradient norm is 0.0; no gradient reached the adapter")
    run.logs.metrics.record(
        {
            "event": "train",
            "step": state.step,
            "epoch": round(state.step / run.cadence.steps.per_epoch, 4),
            "loss": result.loss,
            "learning_rate": result.learning_rate,
            "grad_norm": result.grad_norm,
            "tokens": result.tokens_real,
            "computed_tokens": result.tokens_computed,
            "padding_share": 1 - result.tokens_real / result.tokens_computed,
            "seconds": seconds,
        }
    )
    run.logs.progress_line.update(state.step, result.loss, clock.tokens / clock.train_seconds, state.seconds)


def _validate(run: Run, state: TrainingState, data: ValidationData) -> None:
    """Validation loss; a new best is saved as the run's result; early stopping is decided."""
    session = run.session
    start = time.perf_counter()
    loss = validation_loss(session.accelerator, run.trainables.bare, data, run.trainables.logits_mask)
    best = judge(state, loss, run.cadence.early_stop)
    if best and session.is_main:
        _save_result(run)
    session.accelerator.wait_for_everyone()
    run.logs.metrics.record(
        {
            "event": "validation",
            "step": state.step,
            "validation_loss": loss,
            "best": best,
            "seconds": time.perf_counter() - start,
        }
    )
    session.say(f"step {state.step}: validation loss {loss:.4f}{' (best so far)' if best else ''}")


def _checkpoint(run: Run, state: TrainingState, clock: Clock) -> None:
    session = run.session
    state.seconds = clock.run_seconds()
    state.metrics_lines = run.logs.metrics.lines
    checkpoint.save_checkpoint(
        session.layout, state, run.trainables, session.accelerator, run.cadence.checkpoints_to_keep
    )
    if session.is_main:  # a long run's curve so far
        _plot(session)


def _save_result(run: Run) -> None:
    """The run's product, `adapter/` (or `model/` for full fine-tuning), each file replaced
    atomically."""
    layout, full = run.session.layout, run.model.full
    staging = rundir.staging_dir(layout.root, "result")
    models.save_trained(run.trainables.bare, run.model.tokenizer, staging, full=full)
    rundir.replace_files_from(staging, layout.result(full=full))


def _plot(session: Session) -> None:
    layout = session.layout
    plots.plot_losses(read_metrics(layout.metrics), layout.loss_plot, session.name)


class _StopRequest:
    def __init__(self) -> None:
        self.flag = False

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        if accelerator.num_processes == 1:
            return self.flag
        return bool(sum_over_processes(accelerator, float(self.flag)))


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


# -- set-up phases -----------------------------------------------------------------------------------


def _start_accelerator(device: str, dtype: str) -> tuple[Accelerator, str]:
    """The process group, and the device type (cuda or cpu) the `trainer.device` setting gives."""
    import torch
    from accelerate import Accelerator

    device_type = models.resolve_device(device)
    model_dtype = models.resolve_dtype(dtype, device_type)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model_dtype, "no")
    accelerator = Accelerator(
        cpu=device_type == "cpu",
        mixed_precision=precision if device_type == "cuda" else "no",
        device_placement=False,  # the model is loaded onto its device; batches are moved by collate
    )
    return accelerator, device_type


def _set_up_model(loaded: LoadedRecipe, source: ModelSource, session: Session) -> LoadedModel:
    models.quiet_transformers()
    recipe = loaded.recipe
    tokenizer, model = _load_model(loaded, source, session.accelerator)
    summary = models.summarize(model)
    how = _describe_loading(recipe, session.device_type, session.accelerator.num_processes)
    session.say(f"loaded {recipe.base_model}: {how}; {summary.describe()}")
    full = recipe.adapter.type == "none"
    return LoadedModel(tokenizer, model, summary, models.supports_logits_mask(model), full)


def _set_up_data(
    session: Session, prepare: Callable[[], PreparedData], t: Trainer, seed: int, pad_token_id: int
) -> RunData:
    """The prepared data (one process fills the tokenized-data cache), the micro-batches of
    every step, and this process's share of the validation batches."""
    accelerator, world = session.accelerator, session.accelerator.num_processes
    with accelerator.main_process_first():
        data = prepare()
    if len(data.train) == 0:
        raise UserError("the training split has no rows left after preparation; check data.dataset and data.max_rows")
    split = data.validation if data.validation is not None and len(data.validation) else None
    schedule = batching.Schedule(
        tuple(data.train.lengths), t.batch_size, t.gradient_accumulation_steps, world, seed, t.group_by_length
    )
    eval_batch = t.eval_batch_size or t.batch_size
    session.say(_padding_note(schedule, data.train))
    measured = Measured(
        train_rows=len(data.train),
        validation_rows=len(split) if split is not None else 0,
        train_tokens_per_epoch=schedule.computed_tokens_per_epoch(),
        validation_tokens=_validation_tokens(split, eval_batch),
        max_length=data.max_length,
        processes=world,
    )
    validation = (
        ValidationData(
            split,
            batching.evaluation_batches(split.lengths, eval_batch, world, accelerator.process_index),
            pad_token_id,
        )
        if split is not None
        else None
    )
    steps = trainer_steps(t, train_rows=len(data.train), processes=world)
    return RunData(data, TrainingData(data.train, schedule, pad_token_id), validation, steps, measured)


def _set_up_optimizer(session: Session, model: LoadedModel, t: Trainer, total: int) -> Trainables:
    """The recipe's optimizer over the trainable parameters and its learning-rate schedule,
    prepared by accelerate (the model is wrapped for data parallelism)."""
    import torch

    params = [p for p in model.model.parameters() if p.requires_grad]
    o = t.optimizer
    optimizer = models.build_optimizer(
        params, type=o.type, lr=t.learning_rate, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
    warmup = math.ceil(t.learning_rate_scheduler.warmup_fraction * total)
    decay = t.learning_rate_scheduler.decay
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, decay))
    wrapped, optimizer = session.accelerator.prepare(model.model, optimizer)
    max_norm = t.gradient_clipping.clipglobalnorm
    return Trainables(
        model=wrapped,
        bare=session.accelerator.unwrap_model(wrapped),
        optimizer=optimizer,
        scheduler=scheduler,
        max_norm=max_norm if max_norm is not None else math.inf,
        logits_mask=model.logits_mask,
    )


def _open_logs(
    session: Session, loaded: LoadedRecipe, options: TrainOptions, state: TrainingState, total: int, cost: float
) -> Logs:
    """metrics.jsonl (continued from a checkpoint), the recipe's extra sinks and the progress line;
    `cost` is dollars per second of the run."""
    return Logs(
        MetricsLog(
            session.layout,
            enabled=session.is_main,
            lines=state.metrics_lines,
            report_to=loaded.recipe.trainer.report_to,
            run_config=loaded.resolved,
            say=session.say,
        ),
        ProgressLine(
            enabled=session.is_main,
            total_steps=total,
            start_step=state.step,
            cost_per_second=cost,
            stream=options.stream,
        ),
    )


def _resume(session: Session, split_hashes: dict[str, str], trainables: Trainables) -> TrainingState | None:
    """Restore the newest checkpoint into the live objects (None: there is none yet). The data
    must be what the run started with."""
    import json

    layout, say = session.layout, session.say
    run_dir = layout.root
    path = layout.manifest
    recorded = json.loads(path.read_text(encoding="utf-8"))["data_hashes"] if path.is_file() else {}
    if recorded and recorded != split_hashes:
        changed = sorted(k for k in set(recorded) | set(split_hashes) if recorded.get(k) != split_hashes.get(k))
        raise UserError(
            f"--resume {run_dir}: the data changed since the run started ({', '.join(changed)}); resuming would not "
            "continue the same training. Restore the data or start a new run"
        )
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is None:
        say(f"{run_dir} has no checkpoint yet: starting it from the beginning")
        return None
    accelerator = session.accelerator
    state = checkpoint.load_checkpoint(
        latest, trainables, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    say(f"resuming from {latest.relative_to(run_dir)} (step {state.step:,})")
    return state


def _write_run_files(
    layout: RunLayout, planned: RunPlan, options: TrainOptions, origin: manifest.Origin, from_step: int
) -> None:
    """plan.json and manifest.json (a resumed run adds a session to its manifest)."""
    import datetime as dt
    import json

    session = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command_line": list(options.command_line),
        "from_step": from_step,
    }
    if options.resume and layout.manifest.is_file():
        record = json.loads(layout.manifest.read_text(encoding="utf-8"))
    else:
        rundir.write_json_atomic(layout.plan, planned.document)
        record = manifest.build_manifest(origin, planned.device)
    record["sessions"].append(session)
    rundir.write_json_atomic(layout.manifest, record)


# -- set-up helpers ------------------------------------------------------------------------------------


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


def _pipeline(loaded: LoadedRecipe, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
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


def _load_model(
    loaded: LoadedRecipe, source: ModelSource, accelerator: Accelerator
) -> tuple[PreTrainedTokenizerBase, torch.nn.Module]:
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


def _describe_loading(recipe: Recipe, device_type: str, world: int) -> str:
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
        rundir.write_text_atomic(RunLayout(run_dir).resolved_recipe, rundir.resolved_recipe_text(loaded))
    return run_dir.resolve()


def _agree(accelerator: Accelerator, decide: Callable[[], Path]) -> Path:
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


def _oom_message(recipe: Recipe, max_length: int, step: int) -> str:
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
                f"--resume continues a run with the recipe it started with ({RunLayout(resume).resolved_recipe}); "
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
