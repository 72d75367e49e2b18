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
import datetime as dt
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from lora_recipes.data.types import PreparedData, TokenizedSplit
from lora_recipes.errors import LoraRecipesError, RuntimeFailure, UserError
from lora_recipes.model import loading as models
from lora_recipes.model.source import ModelSource, load_options, recipe_model_source
from lora_recipes.planning.plan import Steps, resolve_architecture, trainer_steps
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.recipe.types import Recipe, Trainer
from lora_recipes.training import batching, checkpoint, manifest, model_card, plots
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
from lora_recipes.training.tracking import Status
from lora_recipes.training.validation import ValidationData, bounded_split, judge, validation_loss

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
    precision: models.Precision  # the data types on this device
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

    def close(self, status: Status = "killed") -> None:
        """The progress line ends; metrics.jsonl closes and the tracking runs still open end with
        `status` (a finished run's trackers ended in `_finish`)."""
        self.progress_line.close()
        self.metrics.close(status)

    def exit(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        """`close` when the run's ExitStack unwinds: failed on an error, killed otherwise."""
        self.close("failed" if exc is not None and not isinstance(exc, KeyboardInterrupt) else "killed")


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
    accelerator, device_type, precision = _start_accelerator(recipe)
    say = _Say(accelerator.is_main_process, options.stream or sys.stderr)
    for note in precision.notes:
        say(f"note: {note}")
    source = recipe_model_source(loaded)
    _check_cpu_is_enough(loaded, device_type, t.device)

    opening = _Opening()
    try:
        with contextlib.ExitStack() as hold:
            run_dir = _agree(accelerator, lambda: _open_run_dir(loaded, options, hold, opening))
            session = Session(accelerator, device_type, precision, RunLayout(run_dir), say, loaded.name)
            model = _set_up_model(loaded, source, session)
            prepare = build_data or _pipeline
            data = _set_up_data(
                session, lambda: prepare(loaded, model.tokenizer), t, recipe.seed, model.tokenizer.pad_token_id
            )
            trainables = _set_up_optimizer(session, model, t, data.steps.total)
            if not options.resume:  # every input is checked: an earlier run's files may go now
                _agree(accelerator, lambda: _claim_run_dir(loaded, session, opening))
            hashes = dict(data.prepared.split_hashes)
            state = TrainingState(world_size=accelerator.num_processes, data_hashes=hashes)
            if options.resume:
                state = _resume(session, hashes, trainables) or state
            planned = plan_run(loaded, data.prepared.report, data.measured, device_type)
            for warning in planned.warnings:
                say(f"warning: {warning}")
            if session.is_main:
                origin = manifest.Origin(
                    recipe.seed,
                    data.prepared.split_hashes,
                    recipe.base_model,
                    source.describe(),
                    options.command_line,
                    recipe_path=loaded.path,
                    base_identity=_identity_json(model.model),
                    precision=asdict(precision),
                )
                _write_run_files(session, planned, options, origin, state.step)
            logs = _open_logs(session, loaded, options, state, data, planned.cost_per_second)
            hold.push(logs.exit)
            say(f"training {data.steps.total:,} steps ({data.steps.per_epoch:,} per epoch) into {run_dir}")

            cadence = Cadence(
                data.steps,
                t.eval_steps,
                t.steps_per_checkpoint,
                t.checkpoints_to_keep,
                t.early_stop,
                options.stop_at_step,
            )
            run = Run(session, model, trainables, data, cadence, logs)
            stop = hold.enter_context(_stop_signals(say))
            clock = Clock(started, state.seconds)
            opening.training = True
            import torch

            try:
                ending = _loop(run, state, clock, stop)
            except torch.OutOfMemoryError as exc:
                raise RuntimeFailure(_oom_message(recipe, data.prepared.max_length, state.step)) from exc
            if ending != "finished":
                return _result(run, state, None, interrupted=ending == "interrupted")
            return _finish(run, state, clock, planned)
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or one while loading
        raise Interrupted(opening.run_dir) from exc
    except OSError as exc:  # one the write boundaries did not name (a log, a cache)
        where = f"; continue from the last checkpoint with `lora-recipes train --resume {opening.run_dir}`"
        raise RuntimeFailure(rundir.describe_os_error(exc, "access") + (where if opening.training else "")) from exc


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that stopped `train` at once (a second one, or one before training began);
    `run_dir` is the run it leaves (None: none was opened)."""

    def __init__(self, run_dir: Path | None) -> None:
        super().__init__()
        self.run_dir = run_dir


@dataclass
class _Opening:
    """What the main process learned opening the run directory, for the phases after it."""

    run_dir: Path | None = None
    empty_first: bool = False  # an earlier run's files are removed once every input is checked
    created: bool = False  # this start made the folder: a start that fails removes it again
    training: bool = False  # the loop began: from here on a failure keeps everything


def _loop(run: Run, state: TrainingState, clock: Clock, stop: _StopRequest) -> Ending:
    """Optimizer steps until the last, an early stop, or a stop that was asked for (a signal, or
    --stop-at-step); validation and checkpoints on their cadence."""
    session, cadence, total = run.session, run.cadence, run.cadence.steps.total
    run.trainables.model.train()
    while state.step < total and not state.stopped_early:
        step_start = time.perf_counter()
        result = train_step(session.accelerator, run.trainables, run.data.train, state.step)
        _wait_for_device(session.device_type)  # the optimizer's queued kernels belong to this step's time
        state.step += 1
        _check_finite(run, state, result)
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


def _check_finite(run: Run, state: TrainingState, result: StepResult) -> None:
    """Stop at a step whose loss (or, without fp16's loss scaling, which skips such steps, whose
    gradient norm) is NaN or infinite: the weights it produced are no use. Nothing of the step is
    recorded; the last checkpoint and the best adapter stay as they were."""
    scaled = run.session.accelerator.scaler is not None
    if math.isfinite(result.loss) and (scaled or math.isfinite(result.grad_norm)):
        return
    layout = run.session.layout
    what = f"loss is {result.loss}" if not math.isfinite(result.loss) else f"gradient norm is {result.grad_norm}"
    last = checkpoint.latest_checkpoint(layout.root)
    kept = [f"the last checkpoint ({last.relative_to(layout.root)})"] if last is not None else []
    kept += [f"the best adapter (step {state.best_step})"] if state.best_step is not None else []
    saved = " and ".join(kept) + (" are kept" if len(kept) > 1 else " is kept") if kept else "nothing was saved yet"
    raise RuntimeFailure(
        f"step {state.step}: the training {what}, not a finite number; stopped ({saved}). Training has "
        "diverged (a learning rate too high, or a float16 overflow): resuming would repeat it. Lower "
        "trainer.learning_rate, keep trainer.gradient_clipping.clipglobalnorm on, or train in bfloat16, then start a "
        "new run"
    )


def _wait_for_device(device_type: str) -> None:
    """Wait until the GPU has run what was queued (CUDA kernels run asynchronously), so a clock
    read afterwards charges each step its own work (scripts/bench_gpu.py's baseline does the same)."""
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


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
        run.logs.progress_line.close()
        _plot(session)
        layout = session.layout
        with rundir.os_errors("write", layout.cost_report_md):
            rundir.write_text_atomic(layout.cost_report_md, render_cost_report(report))
        _write_card(session, report)
        rundir.write_json_strict(layout.cost_report_json, report)  # last: marks the run finished
        run.logs.metrics.finish(layout, full=run.model.full)  # the trackers' artifacts
        run.logs.close("finished")
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
            "grad_norm": result.grad_norm if math.isfinite(result.grad_norm) else None,  # fp16: a skipped step
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
    progress = run.logs.progress_line
    progress.validation_start()
    loss = validation_loss(
        session.accelerator, run.trainables.bare, data, run.trainables.logits_mask, progress.validation_progress
    )
    progress.validation_end()
    best = judge(state, loss, run.cadence.early_stop)  # never a loss that is not finite
    if best and session.is_main:
        _save_result(run)
    session.accelerator.wait_for_everyone()
    run.logs.metrics.record(
        {
            "event": "validation",
            "step": state.step,
            "validation_loss": loss if math.isfinite(loss) else None,
            "best": best,
            "seconds": time.perf_counter() - start,
        }
    )
    note = " (best so far)" if best else "" if math.isfinite(loss) else " (not a finite number: never the best)"
    session.say(f"step {state.step}: validation loss {loss:.4f}{note}")


def _checkpoint(run: Run, state: TrainingState, clock: Clock) -> None:
    session = run.session
    state.seconds = clock.run_seconds()
    state.metrics_lines = run.logs.metrics.lines
    _check_weights(run, state, "checkpoint")
    checkpoint.save_checkpoint(
        session.layout, state, run.trainables, session.accelerator, run.cadence.checkpoints_to_keep
    )
    if session.is_main:  # a long run's curve so far
        _plot(session)


def _save_result(run: Run) -> None:
    """The run's product, `adapter/` (or `model/` for full fine-tuning), each file replaced
    atomically."""
    layout, full = run.session.layout, run.model.full
    target = layout.result(full=full)
    _check_weights(run, None, target.name)
    with rundir.os_errors("write", target):
        staging = rundir.staging_dir(layout.root, "result")
        try:
            models.save_trained(run.trainables.bare, run.model.tokenizer, staging, full=full)
            _check_json_files(staging, target)
            rundir.replace_files_from(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_weights(run: Run, state: TrainingState | None, what: str) -> None:
    """Refuse to save weights that are not finite (the loss check stops a run first; this keeps
    any way round it from reaching a checkpoint or the result)."""
    import torch

    for name, param in run.trainables.bare.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            at = f"step {state.step}: " if state is not None else ""
            raise RuntimeFailure(
                f"{at}the trainable weight {name} holds NaN or infinity; the {what} was not saved (the earlier one is "
                "kept). Training has diverged: lower trainer.learning_rate and start a new run"
            )


def _check_json_files(folder: Path, target: Path) -> None:
    """Every JSON file a library wrote for the result parses as strict JSON (no NaN or Infinity,
    which PEFT would write for a NaN setting)."""
    import json

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
        except ValueError as exc:
            raise RuntimeFailure(
                f"{target / path.name}: would hold {exc} (not JSON); not saved. Check the recipe's numbers"
            ) from exc


def _write_card(session: Session, report: dict[str, Any]) -> None:
    """The model card of the run's result (adapter/README.md, training.model_card). The weights
    are saved already: a card that cannot be written is a warning, not a failed run."""
    try:
        model_card.write_run_card(session.layout.root, cost=report)
    except Exception as exc:
        session.say(f"warning: the model card was not written ({type(exc).__name__}: {exc})")


def _plot(session: Session) -> None:
    layout = session.layout
    with rundir.os_errors("write", layout.loss_plot):
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


# How long a process waits for the others at a barrier or collective before the run is aborted.
# The default of torch and accelerate (10 minutes with NCCL) is shorter than what the main process
# may do while the others wait in main_process_first(): a first run's model download or GGUF
# conversion, and preparing a large data set. LORA_RECIPES_PROCESS_GROUP_TIMEOUT (seconds) sets it.
PROCESS_GROUP_TIMEOUT_ENV = "LORA_RECIPES_PROCESS_GROUP_TIMEOUT"
DEFAULT_PROCESS_GROUP_TIMEOUT_SECONDS = 2 * 3600


def process_group_timeout(environ: Mapping[str, str]) -> dt.timedelta:
    """The process group's timeout: LORA_RECIPES_PROCESS_GROUP_TIMEOUT seconds, else 2 hours."""
    text = environ.get(PROCESS_GROUP_TIMEOUT_ENV, "").strip()
    if not text:
        return dt.timedelta(seconds=DEFAULT_PROCESS_GROUP_TIMEOUT_SECONDS)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{PROCESS_GROUP_TIMEOUT_ENV}={text!r}: give a number of seconds above 0 (e.g. 7200)")
    return dt.timedelta(seconds=seconds)


def _start_accelerator(recipe: Recipe) -> tuple[Accelerator, str, models.Precision]:
    """The process group (with `process_group_timeout`), the device type (cuda or cpu) the
    `trainer.device` setting gives, and the precision of the run on that device (see
    models.resolve_precision: from the GPU's compute capability, not torch's bf16 answer)."""
    import os

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    device_type = models.resolve_device(recipe.trainer.device)
    precision = models.resolve_precision(
        recipe.model_parameters.dtype,
        recipe.quantization.bnb_4bit_compute_dtype,
        device_type=device_type,
        capability=models.device_capability(device_type),
        full=recipe.adapter.type == "none",
        bits=recipe.quantization.bits,
    )
    accelerator = Accelerator(
        cpu=device_type == "cpu",
        mixed_precision=precision.mixed_precision,
        device_placement=False,  # the model is loaded onto its device; batches are moved by collate
        kwargs_handlers=[InitProcessGroupKwargs(timeout=process_group_timeout(os.environ))],
    )
    return accelerator, device_type, precision


def _set_up_model(loaded: LoadedRecipe, source: ModelSource, session: Session) -> LoadedModel:
    models.quiet_transformers()
    recipe = loaded.recipe
    tokenizer, model = _load_model(loaded, source, session.accelerator)
    summary = models.summarize(model)
    how = _describe_loading(recipe, session.precision, session.device_type, session.accelerator.num_processes)
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
    if split is not None and t.validation_max_rows is not None and len(split) > t.validation_max_rows:
        session.say(
            f"validating on {t.validation_max_rows:,} of {len(split):,} validation rows (trainer.validation_max_rows)"
        )
        split = bounded_split(split, t.validation_max_rows)
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
    if o.type.startswith("paged_") and models.paged_state_share(params) == 0:
        session.say(
            f"note: trainer.optimizer.type {o.type} pages nothing here: bitsandbytes pages only tensors of at least "
            f"{models.PAGED_MIN_ELEMENTS:,} elements, and every trainable tensor is smaller"
        )
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
        scaler=session.accelerator.scaler,
    )


def _open_logs(
    session: Session, loaded: LoadedRecipe, options: TrainOptions, state: TrainingState, data: RunData, cost: float
) -> Logs:
    """metrics.jsonl (continued from a checkpoint), the recipe's trackers (a resumed run continues
    its own tracking runs) and the progress line; `cost` is dollars per second of the run."""
    return Logs(
        MetricsLog(
            session.layout,
            enabled=session.is_main,
            lines=state.metrics_lines,
            report_to=loaded.recipe.trainer.report_to,
            run_config=loaded.resolved,
            say=session.say,
            tracking=loaded.recipe.tracking,
            name=loaded.name,
            resumed=options.resume,
            from_step=state.step,
        ),
        ProgressLine(
            enabled=session.is_main,
            total_steps=data.steps.total,
            start_step=state.step,
            cost_per_second=cost,
            stream=options.stream,
            eval_steps=loaded.recipe.trainer.eval_steps if data.validation is not None else None,
            validation_tokens=data.measured.validation_tokens,
        ),
    )


def _resume(session: Session, split_hashes: dict[str, str], trainables: Trainables) -> TrainingState | None:
    """Restore the newest good checkpoint into the live objects (None: there is none yet); a
    damaged newer one is reported and skipped. The data must be what the run started with, as the
    manifest and the checkpoint itself record it."""
    layout, say = session.layout, session.say
    run_dir = layout.root
    _check_same_data(run_dir, _manifest_data_hashes(layout, say), split_hashes, layout.manifest.name)
    accelerator = session.accelerator
    restored = checkpoint.restore_newest(
        run_dir, trainables, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    if restored is None:
        say(f"{run_dir} has no checkpoint yet: starting it from the beginning")
        return None
    for damage in restored.skipped:
        say(
            f"warning: checkpoint {damage.folder.name} is damaged and was skipped ({damage.file}: {damage.why}); "
            "using the one before it"
        )
    _check_same_data(run_dir, restored.state.data_hashes, split_hashes, f"checkpoints/{restored.folder.name}")
    say(f"resuming from {restored.folder.relative_to(run_dir)} (step {restored.state.step:,})")
    return restored.state


def _manifest_data_hashes(layout: RunLayout, say: Callable[[str], None]) -> dict[str, str]:
    """The data hashes manifest.json recorded ({} when it is gone; the checkpoints record them too)."""
    import json

    if not layout.manifest.is_file():
        return {}
    try:
        hashes = json.loads(layout.manifest.read_text(encoding="utf-8"))["data_hashes"]
        if isinstance(hashes, dict):
            return {str(k): str(v) for k, v in hashes.items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    say(f"warning: {layout.manifest} is unreadable; the data is checked against the checkpoint's record")
    return {}


def _check_same_data(run_dir: Path, recorded: dict[str, str], now: dict[str, str], where: str) -> None:
    if recorded and recorded != now:
        changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
        raise UserError(
            f"--resume {run_dir}: the data changed since the run started ({', '.join(changed)}, as {where} "
            "records it); resuming would not continue the same training. Restore the data or start a new run"
        )


def _identity_json(model: Any) -> dict[str, Any] | None:
    """The manifest's record of the base: its portable id and hub revision beside `loaded_from`."""
    identity = models.base_identity(model)
    if identity is None:
        return None
    record = identity.to_json()
    record.pop("location")  # the manifest's `loaded_from` says it
    return record


def _write_run_files(
    session: Session, planned: RunPlan, options: TrainOptions, origin: manifest.Origin, from_step: int
) -> None:
    """plan.json and manifest.json (a resumed run adds a session to its manifest; one whose
    manifest is gone or unreadable gets a new one)."""
    import datetime as dt
    import json

    layout = session.layout
    entry = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command_line": list(options.command_line),
        "from_step": from_step,
    }
    record: Any = None
    if options.resume and layout.manifest.is_file():
        try:
            record = json.loads(layout.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("sessions"), list):
            session.say(f"warning: {layout.manifest} was unreadable; writing a new one")
            record = None
    if record is None:
        rundir.write_json_strict(layout.plan, planned.document)
        record = manifest.build_manifest(origin, planned.device)
    record["sessions"].append(entry)
    rundir.write_json_strict(layout.manifest, record)


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
        model = models.load_base_model(
            source, **load_options(loaded), device=str(accelerator.device), full=recipe.adapter.type == "none"
        )
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


def _describe_loading(recipe: Recipe, precision: models.Precision, device_type: str, world: int) -> str:
    q = recipe.quantization
    if q.bits == 4:
        double = ", double quantization" if q.bnb_4bit_use_double_quant else ""
        weights = f"4-bit {q.bnb_4bit_quant_type}{double}, {precision.compute} compute"
    elif q.bits == 8:
        weights = "8-bit"
    else:
        weights = f"{precision.weights} weights"
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


def _open_run_dir(loaded: LoadedRecipe, options: TrainOptions, hold: contextlib.ExitStack, opening: _Opening) -> Path:
    """Choose and check the run directory, mark it (`RunLayout.marker`) and take its lock (main
    process only). An earlier run's files are not touched here: `_claim_run_dir` removes them once
    the model and the data have loaded."""
    if options.resume:
        assert options.run_dir is not None
        run_dir = options.run_dir
        rundir.check_resumable(run_dir)
    else:
        run_dir = options.run_dir or rundir.new_run_dir_name(loaded.name, Path(loaded.recipe.output_directory))
        opening.empty_first = rundir.check_new_run_dir(run_dir, overwrite=options.overwrite)
        opening.created = not run_dir.exists()
    opening.run_dir = run_dir.resolve()
    layout = RunLayout(run_dir)
    with rundir.os_errors("create the run directory", run_dir, error=UserError):
        run_dir.mkdir(parents=True, exist_ok=True)
        if opening.created:  # runs last: after the lock is let go
            hold.push(lambda kind, exc, tb: _remove_failed_start(layout, opening, exc, folder=True))
        rundir.write_marker(run_dir)  # first (a run from before the marker gets it on --resume)
        hold.enter_context(rundir.run_lock(run_dir))
    if opening.created:  # while the lock is held
        hold.push(lambda kind, exc, tb: _remove_failed_start(layout, opening, exc, folder=False))
    if not options.resume and not opening.empty_first:  # first, so that a run killed while loading can be resumed
        with rundir.os_errors("write", layout.resolved_recipe):
            rundir.write_text_atomic(layout.resolved_recipe, rundir.resolved_recipe_text(loaded))
    return opening.run_dir


def _claim_run_dir(loaded: LoadedRecipe, session: Session, opening: _Opening) -> Path:
    """A new run in a folder that holds an earlier one (--overwrite, or a start that trained
    nothing): with every input checked, remove what that run wrote (and only that) and write this
    run's recipe."""
    layout = session.layout
    if opening.empty_first:
        with rundir.os_errors("empty", layout.root):
            kept = rundir.empty_run_dir(layout.root)
        session.say(f"removed the earlier run's files from {layout.root}")
        if kept:
            session.say(f"kept what lora-recipes did not write there: {', '.join(kept)}")
        with rundir.os_errors("write", layout.resolved_recipe):
            rundir.write_text_atomic(layout.resolved_recipe, rundir.resolved_recipe_text(loaded))
    return layout.root


def _remove_failed_start(layout: RunLayout, opening: _Opening, exc: BaseException | None, *, folder: bool) -> None:
    """A start that failed before training (a bad input, a full disk) in a folder it made itself
    removes what it wrote, so the same command can run again; a run that began training keeps
    everything, and so does Ctrl-C (the folder can be resumed)."""
    if opening.training or not isinstance(exc, LoraRecipesError | OSError):
        return
    if folder:
        with contextlib.suppress(OSError):
            layout.root.rmdir()  # only if empty: whatever else appeared there stays
        return
    with contextlib.suppress(OSError):
        rundir.empty_run_dir(layout.root)
        layout.marker.unlink()


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
