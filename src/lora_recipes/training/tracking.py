"""Experiment trackers: TensorBoard, Weights & Biases and MLflow, through accelerate's tracker API
(`accelerate.tracking`: one `start`, `store_init_configuration`, `log` and `finish` for all three).

What accelerate's trackers leave to the caller, done here:

- ids. A run's tracking-run ids are kept in the run directory (`RunLayout.tracking`,
  tracking.json). A resumed run (`train --resume`) continues its own W&B and MLflow runs; a new
  run always starts new ones, so two recipes trained into `runs/try` one after the other
  (--overwrite) never share one. W&B ids are `<run directory's name>-<8 random hex digits>`.
- where. W&B logs under `tracking.project` (its entity, server and mode from WANDB_ENTITY,
  WANDB_BASE_URL, WANDB_MODE); MLflow under the experiment `tracking.project` at `tracking.uri`,
  else MLFLOW_TRACKING_URI, else an embedded SQLite store beside the run directory:
  `sqlite:///<run directory's parent>/mlflow.db`, artifacts in `<parent>/mlartifacts` (the default
  run directories share `output_directory`, so every run of a project is in one store:
  `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`). TensorBoard writes event files into
  the run directory's tensorboard/ (`tensorboard --logdir runs`); a resumed run purges what the
  killed session logged after its checkpoint. (MLflow keeps such steps, so a run killed between
  checkpoints holds them twice; W&B keeps the first and ignores the repeats.)
- what. Parameters: the resolved recipe flattened to dotted keys (`trainer.learning_rate`), for
  W&B as its nested config. Metrics: every metrics.jsonl record's numbers as `<event>/<key>` at
  its step (`train/loss`, `validation/validation_loss`). Artifacts (`tracking.artifacts`, at the
  end): the adapter folder, loss.png, the cost report, plan.json and the resolved recipe, to
  MLflow's artifact store and as a W&B model artifact; TensorBoard stores no files.
- how it ends. MLflow runs end FINISHED, FAILED (an error) or KILLED (stopped to be resumed); W&B
  runs with exit code 0 or 1.

A tracker that is not installed (`pip install 'lora-recipes[tracking]'`) is skipped with a
warning, and so is one that fails to start or to log: the run goes on, metrics.jsonl has
everything. Only the main process of a data-parallel run tracks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lora_recipes import __version__
from lora_recipes.atomic import write_json_atomic
from lora_recipes.training.run_dir import RunLayout

if TYPE_CHECKING:
    from lora_recipes.recipe.types import Tracking

TRACKERS = ("tensorboard", "wandb", "mlflow")
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"
# MLflow's limits on a parameter's key and value.
_PARAM_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
MAX_PARAM_VALUE = 6000

Status = Literal["finished", "failed", "killed"]
Say = Callable[[str], None]


def flat_params(value: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested mapping as dotted keys with scalar values (lists and empty mappings as JSON, None as
    `null`): what MLflow and TensorBoard's hparams take."""
    out: dict[str, str | int | float | bool] = {}
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            name = _PARAM_KEY.sub("_", f"{prefix}.{key}" if prefix else str(key))
            out.update(flat_params(item, name))
        return out
    if isinstance(value, bool | int | float | str):
        out[prefix] = value if not isinstance(value, str) or len(value) <= MAX_PARAM_VALUE else value[:MAX_PARAM_VALUE]
    elif value is None:
        out[prefix] = "null"
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
        out[prefix] = text[:MAX_PARAM_VALUE]
    return out


def embedded_mlflow_uri(run_dir: Path) -> str:
    """The embedded MLflow store of a run directory: `sqlite:///<parent>/mlflow.db`."""
    return f"sqlite:///{(Path(run_dir).resolve().parent / EMBEDDED_DB)}"


def mlflow_uri(setting: str | None, run_dir: Path, environ: Mapping[str, str]) -> tuple[str, bool]:
    """MLflow's tracking URI for a run, and whether it is the embedded default (see the module notes)."""
    if setting:
        return setting, False
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"], False
    return embedded_mlflow_uri(run_dir), True


def wandb_run_id(run_dir: Path) -> str:
    """A new W&B run id: the run directory's name and 8 random hex digits."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(run_dir).name).strip("-")[:48] or "run"
    return f"{stem}-{secrets.token_hex(4)}"


def read_ids(layout: RunLayout) -> dict[str, Any]:
    """tracking.json ({} when there is none or it does not parse)."""
    try:
        found = json.loads(layout.tracking.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@contextlib.contextmanager
def _quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the level of third-party loggers for a block (MLflow's and alembic's INFO lines
    when a SQLite store is created)."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, before, strict=True):
            lg.setLevel(old)


_MLFLOW_LOGGERS = ("mlflow", "alembic", "alembic.runtime.migration", "mlflow.store.db.utils")


@dataclass
class _Active:
    name: str  # tensorboard, wandb or mlflow
    tracker: Any  # an accelerate.tracking.GeneralTracker


class Trackers:
    """The trackers of one run (see the module notes); every method does nothing when there are none."""

    def __init__(self, active: Sequence[_Active], say: Say) -> None:
        self.active = list(active)
        self.say = say
        self.closed = False

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.active]

    @classmethod
    def open(
        cls,
        layout: RunLayout,
        *,
        report_to: Sequence[str],
        settings: Tracking,
        config: Mapping[str, Any],
        name: str,
        resumed: bool,
        from_step: int,
        say: Say,
        environ: Mapping[str, str] | None = None,
    ) -> Trackers:
        """Start the trackers of `report_to` for the run in `layout` (`config`: the resolved recipe;
        `name`: the recipe's; `resumed` and `from_step`: a resumed run and the step it resumes from)."""
        import os

        environ = os.environ if environ is None else environ
        ids = read_ids(layout) if resumed else {}
        run_name = settings.run_name or layout.root.name
        params = {**flat_params(config), "run_dir": layout.root.name, "lora_recipes_version": __version__}
        active: list[_Active] = []
        for tracker in report_to:
            if importlib.util.find_spec(tracker) is None:
                say(
                    f"trainer.report_to: {tracker} is not installed (pip install {tracker}, or "
                    "'lora-recipes[tracking]'); skipping it"
                )
                continue
            try:
                started = _START[tracker](
                    _Start(layout, settings, run_name, name, config, params, ids, resumed, from_step, environ)
                )
            except Exception as exc:  # a tracker is an extra: the run goes on without it
                say(f"warning: trainer.report_to: {tracker} did not start ({_first_line(exc)}); skipping it")
                continue
            active.append(started)
        if active:
            write_json_atomic(layout.tracking, {**ids, "trackers": [a.name for a in active]})
            where = [_where(a, layout) for a in active]
            say("tracking: " + "; ".join(w for w in where if w))
        return cls(active, say)

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Metrics at `step` (a tracker that fails is warned about and dropped)."""
        for item in list(self.active):
            try:
                item.tracker.log(dict(values), step=step)
            except Exception as exc:
                self._drop(item, "log", exc)

    def upload(self, layout: RunLayout, *, full: bool) -> None:
        """The run's files to the trackers that store them (MLflow, W&B): the adapter (or model/),
        loss.png, the cost report, plan.json and the resolved recipe."""
        result = layout.result(full=full)
        files = [
            p
            for p in (
                layout.loss_plot,
                layout.cost_report_json,
                layout.cost_report_md,
                layout.plan,
                layout.resolved_recipe,
            )
            if p.is_file()
        ]
        for item in list(self.active):
            try:
                if item.name == "mlflow":
                    if result.is_dir():
                        item.tracker.log_artifacts(str(result), artifact_path=result.name)
                    for path in files:
                        item.tracker.log_artifact(str(path))
                elif item.name == "wandb":
                    _wandb_upload(item.tracker.run, layout, result, files)
            except Exception as exc:
                self._drop(item, "upload files to", exc)

    def close(self, status: Status) -> None:
        """End every tracking run (once)."""
        if self.closed:
            return
        self.closed = True
        for item in self.active:
            try:
                if item.name == "mlflow":
                    import mlflow

                    mlflow.end_run(status=status.upper())
                elif item.name == "wandb":
                    item.tracker.run.finish(exit_code=1 if status == "failed" else 0)
                else:
                    item.tracker.finish()
            except Exception as exc:
                self.say(f"warning: {item.name}: could not end the tracking run ({_first_line(exc)})")

    def _drop(self, item: _Active, what: str, exc: Exception) -> None:
        self.say(f"warning: {item.name}: could not {what} it ({_first_line(exc)}); no longer tracking there")
        self.active.remove(item)
        with contextlib.suppress(Exception):
            if item.name == "mlflow":
                import mlflow

                mlflow.end_run(status="FAILED")
            else:
                item.tracker.finish()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _where(item: _Active, layout: RunLayout) -> str:
    t = item.tracker
    if item.name == "tensorboard":
        return f"TensorBoard in {layout.tensorboard}"
    if item.name == "wandb":
        run = t.run
        url = getattr(run, "url", None)
        return f"W&B run {run.id} in project {run.project}" + (f" ({url})" if url else "")
    if item.name == "mlflow":
        import mlflow

        return f"MLflow run {t.active_run.info.run_id} at {mlflow.get_tracking_uri()}"
    return item.name


# -- starting each tracker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Start:
    """What starting any tracker needs (`ids` is filled in with the ids a resume will need)."""

    layout: RunLayout
    settings: Tracking
    run_name: str
    name: str  # the recipe's
    config: Mapping[str, Any]
    params: dict[str, Any]
    ids: dict[str, Any]
    resumed: bool
    from_step: int
    environ: Mapping[str, str]


def _start_tensorboard(s: _Start) -> _Active:
    from accelerate.tracking import TensorBoardTracker

    extra = {"purge_step": s.from_step + 1} if s.resumed else {}  # hide what came after the checkpoint
    tracker = TensorBoardTracker(s.layout.tensorboard.name, s.layout.root, **extra)
    tracker.start()
    if not s.resumed:
        tracker.store_init_configuration(s.params)
    return _Active("tensorboard", tracker)


def _start_wandb(s: _Start) -> _Active:
    from accelerate.tracking import WandBTracker

    known = s.ids.get("wandb") if s.resumed else None
    run_id = known["id"] if isinstance(known, dict) and known.get("id") else wandb_run_id(s.layout.root)
    project = known["project"] if isinstance(known, dict) and known.get("project") else s.settings.project
    s.layout.wandb.mkdir(parents=True, exist_ok=True)
    tracker = WandBTracker(
        project,
        name=s.run_name,
        id=run_id,
        resume="allow",
        dir=str(s.layout.root),  # W&B writes <dir>/wandb/
        group=s.name,
        job_type="train",
        tags=["lora-recipes", s.name],
        config={**s.config, "run_dir": s.layout.root.name},
    )
    tracker.start()
    s.ids["wandb"] = {"id": run_id, "project": project, "entity": getattr(tracker.run, "entity", None)}
    return _Active("wandb", tracker)


def _start_mlflow(s: _Start) -> _Active:
    with _quiet(*_MLFLOW_LOGGERS):
        import mlflow
        from accelerate.tracking import MLflowTracker

        known = s.ids.get("mlflow") if s.resumed else None
        if isinstance(known, dict) and known.get("tracking_uri"):
            uri, embedded = str(known["tracking_uri"]), bool(known.get("embedded"))
        else:
            uri, embedded = mlflow_uri(s.settings.uri, s.layout.root, s.environ)
        if mlflow.active_run() is not None:  # one left open in this process (an earlier run that failed)
            mlflow.end_run(status="FAILED")
        mlflow.set_tracking_uri(uri)
        artifacts = str(s.layout.root.resolve().parent / EMBEDDED_ARTIFACTS) if embedded else None
        experiment = known.get("experiment") if isinstance(known, dict) else None
        tracker = MLflowTracker(
            experiment_name=experiment or s.settings.project,
            logging_dir=artifacts,
            run_id=known.get("run_id") if isinstance(known, dict) else None,
            tags={"lora_recipes.recipe": s.name, "lora_recipes.run_dir": str(s.layout.root)},
            run_name=s.run_name,
            description=str(s.config.get("description") or "") or None,
        )
        tracker.start()
        if not s.resumed or not isinstance(known, dict):
            tracker.store_init_configuration(s.params)
    s.ids["mlflow"] = {
        "run_id": tracker.active_run.info.run_id,
        "experiment": experiment or s.settings.project,
        "experiment_id": tracker.active_run.info.experiment_id,
        "tracking_uri": uri,
        "embedded": embedded,
    }
    return _Active("mlflow", tracker)


_START: dict[str, Callable[[_Start], _Active]] = {
    "tensorboard": _start_tensorboard,
    "wandb": _start_wandb,
    "mlflow": _start_mlflow,
}


def _wandb_upload(run: Any, layout: RunLayout, result: Path, files: Sequence[Path]) -> None:
    import wandb

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", layout.root.name).strip("-") or "run"
    artifact = wandb.Artifact(f"{stem}-{result.name}", type="model", metadata={"run_dir": layout.root.name})
    if result.is_dir():
        artifact.add_dir(str(result))
    for path in files:
        artifact.add_file(str(path), name=f"run/{path.name}")
    run.log_artifact(artifact)
