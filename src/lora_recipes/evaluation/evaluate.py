"""Score systems (the base model, a trained adapter, OpenAI-compatible endpoints) on a recipe's
fixed evaluation subset and write what came out.

    evaluation subset -> answers per system (resumable) -> scores -> eval.json, predictions, table

Every answer that succeeded is appended to `answers/<system>.jsonl` in the output folder as soon
as it arrives, under a key made of the row, its prompt and everything that shapes the answer
(model, adapter file, decoding, mode). Running again into the same folder asks only for what is
missing, so an interrupted run, or one whose endpoint failed a few requests, is finished by
running it again. The API key of an endpoint is read from its environment variable and written
nowhere: the client redacts it (and credentials in the URL) from every answer and error it hands
back, and only the URL without credentials is recorded.

A system none of whose examples got an answer has no score (None in eval.json, - in the table);
`failed_systems` names them, and the command exits 1 when there is any.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes import __version__
from lora_recipes.atomic import write_json_atomic, write_text_atomic
from lora_recipes.data.types import EvaluationSet, Example
from lora_recipes.errors import UserError
from lora_recipes.evaluation.endpoints import Answer, Client, Endpoint, Policy, ask_all, public_url, url_problem
from lora_recipes.evaluation.endpoints import endpoint as make_endpoint
from lora_recipes.evaluation.generation import finish_output
from lora_recipes.evaluation.metrics import Metric, Score, build_metric, metric_name
from lora_recipes.evaluation.reference import reference_scores
from lora_recipes.evaluation.table import render_table
from lora_recipes.recipe.loader import LoadedRecipe
from lora_recipes.recipe.types import Recipe
from lora_recipes.training import model_card
from lora_recipes.training.run_dir import RunLayout

EVAL_FILE = "eval.json"
TABLE_FILE = "table.md"
ANSWERS_DIR = "answers"

OnAnswered = Callable[[str, int, int], None]  # called per answer: system name, examples answered, examples in all


@dataclass(frozen=True)
class System:
    """One thing to score. `name` keys its scores in eval.json."""

    name: str
    kind: str  # base, adapter or endpoint
    description: str
    adapter_dir: Path | None = None
    endpoint: Endpoint | None = None
    api_key_env: str | None = None

    @property
    def local(self) -> bool:
        return self.kind != "endpoint"

    @property
    def slug(self) -> str:
        return slug(self.name)


def slug(name: str) -> str:
    """A system's name as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "system"


def find_adapter(path: Path) -> tuple[Path, Path | None]:
    """An adapter folder, or a training run directory holding one in `adapter/`: returns the
    adapter folder and the run directory (None for a bare adapter)."""
    if (path / "adapter_config.json").is_file():
        return path, None
    run = RunLayout(path)
    if (run.adapter / "adapter_config.json").is_file():
        return run.adapter, path
    if not path.exists():
        raise UserError(f"--adapter {path}: no such folder")
    if (run.model / "config.json").is_file():
        raise UserError(
            f"--adapter {path}: a full fine-tuning run (it holds model/, not an adapter); score it as a base "
            f"model: --base --set base_model={run.model} --set quantization.bits=null"
        )
    raise UserError(
        f"--adapter {path}: neither a PEFT adapter folder (adapter_config.json) nor a run directory "
        f"with {run.adapter.name}/adapter_config.json"
    )


def plan_systems(
    *,
    adapter: Path | None,
    base: bool,
    endpoints: Sequence[tuple[str, str]],
    chat: bool,
    api_key_envs: Sequence[str],
    base_model: str,
) -> list[System]:
    """The systems of one `evaluate` call, base first (it runs before the adapter is attached to
    the same loaded model). `api_key_envs` is empty or names one variable per endpoint, in order,
    `-` meaning none: a key is never sent to an endpoint it was not named for."""
    if not (adapter or base or endpoints):
        raise UserError("nothing to evaluate: give --adapter PATH, --base, or --endpoint URL --model NAME")
    if api_key_envs and len(api_key_envs) != len(endpoints):
        raise UserError(
            f"--api-key-env is given {len(api_key_envs)} times for {len(endpoints)} endpoints: give it once per "
            "--endpoint, in the same order, with - for an endpoint that takes no key"
        )
    systems: list[System] = []
    if base:
        systems.append(System("base", "base", base_model))
    if adapter is not None:
        adapter_dir, _ = find_adapter(adapter)
        label = f"{adapter_dir.parent.name}/{adapter_dir.name}" if adapter_dir.parent.name else str(adapter_dir)
        systems.append(System("adapter", "adapter", label, adapter_dir=adapter_dir))
    for url, _ in endpoints:
        check_endpoint_url(url)
    taken = {s.slug for s in systems}  # names must differ as file names too
    for i, (url, model) in enumerate(endpoints):
        target = make_endpoint(url, model, chat)
        name = model
        n = 2
        while slug(name) in taken:
            name, n = f"{model}-{n}", n + 1
        taken.add(slug(name))
        key_env = api_key_envs[i] if api_key_envs and api_key_envs[i] != "-" else None
        description = f"{target.protocol} at {target.public_url}"
        system = System(name, "endpoint", description, endpoint=target, api_key_env=key_env)
        api_key(system)  # a missing key fails now, before any data is read
        systems.append(system)
    return systems


def check_endpoint_url(url: str) -> None:
    """Refuse, before anything is loaded, a URL no request can be sent to."""
    problem = url_problem(url)
    if problem is None:
        return
    shown = public_url(url)
    if "://" not in url and problem.startswith("it does not start with"):
        fix = f"write --endpoint http://{shown} (or https://)"
    else:
        fix = "give the server's base URL, like --endpoint http://localhost:8000/v1"
    raise UserError(f"--endpoint {shown}: {problem}; {fix}")


def api_key(system: System) -> str | None:
    if system.api_key_env is None:
        return None
    value = os.environ.get(system.api_key_env)
    if not value:
        raise UserError(f"--api-key-env {system.api_key_env}: the environment variable is not set or empty")
    return value


# --- the resumable record of answers -------------------------------------------------------------


class Journal:
    """Answers already given, one JSON line each, appended as they arrive. A line torn by a crash
    is ignored when read back (its answer is simply asked again)."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self._torn = False  # the file ends inside a line: the next write starts a new one
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    item = json.loads(line)
                    self.records[str(item["key"])] = item

    def add(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        lines = []
        for key, record in items:
            entry = {"key": key, **record}
            self.records[key] = entry
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write() on an O_APPEND descriptor: lines are never interleaved, and a crash leaves
        # at most one torn line at the end.
        if self._torn:
            lines.insert(0, "\n")
            self._torn = False
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _file_identity(path: Path) -> list[Any]:
    """Adapter weights by size and modification time: retraining into the same folder changes
    them, so answers of the old adapter are not reused."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith("adapter_"))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def mode_of(system: System, recipe: Recipe) -> str:
    """The recipe's mode for local models; endpoints always generate (they give no label scores)."""
    return recipe.evaluation.mode if system.local else "generate"


def fingerprint(system: System, recipe: Recipe) -> str:
    """Everything besides the prompt that shapes a system's answer."""
    shape: dict[str, Any] = {
        "kind": system.kind,
        "mode": mode_of(system, recipe),
        "generation": dataclasses.asdict(recipe.generation),
        "target_prefix": recipe.output.target_prefix,
    }
    if system.local:
        shape |= {
            "base_model": recipe.base_model,
            "model_parameters": dataclasses.asdict(recipe.model_parameters),
            "quantization": dataclasses.asdict(recipe.quantization),
            "labels": recipe.output.labels,
        }
        if recipe.prompt.chat_template != "none":  # raw text keeps the keys it always had
            shape["chat"] = chat_identity(recipe)
    if system.adapter_dir is not None:
        shape["adapter"] = [str(system.adapter_dir.resolve()), _file_identity(system.adapter_dir)]
    if system.endpoint is not None:
        shape["endpoint"] = dataclasses.asdict(system.endpoint)
    return _hash(shape)


def chat_identity(recipe: Recipe) -> list[Any]:
    """The chat-template settings that shape a local model's prompts: the setting, the system
    message and, for a template file, its content."""
    setting = recipe.prompt.chat_template
    content = None
    if setting not in ("auto", "tokenizer"):
        with contextlib.suppress(OSError):
            content = hashlib.sha256(Path(setting).read_bytes()).hexdigest()
    return [setting, recipe.prompt.system, content]


# --- answering --------------------------------------------------------------------------------


@dataclass
class Run:
    """What one system produced in this call."""

    fresh: int = 0  # answers obtained now (not resumed)
    seconds: float = 0.0
    load_seconds: float = 0.0
    retries: int = 0
    errors: dict[int, str] = dataclasses.field(default_factory=dict)


def load_local(loaded: LoadedRecipe) -> tuple[Any, Any]:
    """The recipe's base model and tokenizer, loaded as training loads them (same quantization),
    so an adapter is scored on the base it was trained on."""
    from lora_recipes.model import loading as models
    from lora_recipes.model.source import load_options, recipe_model_source

    recipe = loaded.recipe
    mp = recipe.model_parameters
    models.quiet_transformers()
    source = recipe_model_source(loaded)
    tokenizer = models.load_tokenizer(source, revision=mp.revision, trust_remote_code=mp.trust_remote_code)
    model = models.load_base_model(source, **load_options(loaded), device=models.resolve_device(recipe.trainer.device))
    return model, tokenizer


def answer_local(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    prompts: Sequence[str],
    on_answers: Callable[[list[int], list[dict[str, Any]]], None],
) -> None:
    """Generate (or rank labels) for `prompts`; `on_answers(indices, records)` after each batch.
    The prompts are raw; the recipe's prompt format (`prompt.chat_template`) wraps them as training did."""
    from lora_recipes.data.chat import prompt_format
    from lora_recipes.evaluation import generation

    fmt = prompt_format(recipe, tokenizer)
    if recipe.evaluation.mode == "rank":
        generation.rank(
            model,
            tokenizer,
            prompts,
            recipe.output.labels,
            target_prefix=recipe.output.target_prefix,
            batch_size=recipe.evaluation.batch_size,
            on_batch=lambda idx, ranked: on_answers(
                idx, [{"prediction": r.label, "log_likelihoods": list(r.log_likelihoods)} for r in ranked]
            ),
            fmt=fmt,
        )
        return
    stop, prefix = recipe.generation.stop, fmt.target_prefix
    generation.generate(
        model,
        tokenizer,
        prompts,
        recipe.generation,
        batch_size=recipe.evaluation.batch_size,
        seed=recipe.seed,
        on_batch=lambda idx, texts: on_answers(
            idx, [{"completion": t, "prediction": finish_output(t, stop, prefix)} for t in texts]
        ),
        fmt=fmt,
    )


def _run_system(
    system: System,
    recipe: Recipe,
    examples: Sequence[Example],
    journal: Journal,
    keys: Sequence[str],
    model_loader: Callable[[System], tuple[Any, Any]],
    progress: OnAnswered | None,
) -> Run:
    run = Run()
    pending = [i for i, key in enumerate(keys) if key not in journal.records]
    done = len(examples) - len(pending)
    if progress:
        progress(system.name, done, len(examples))
    if not pending:
        return run

    def record(indices: list[int], records: list[dict[str, Any]]) -> None:
        nonlocal done
        journal.add(
            (keys[pending[i]], {"row": examples[pending[i]].row, **r}) for i, r in zip(indices, records, strict=True)
        )
        run.fresh += len(records)
        done += len(records)
        if progress:
            progress(system.name, done, len(examples))

    if system.local:
        started = time.perf_counter()
        model, tokenizer = model_loader(system)
        run.load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        answer_local(model, tokenizer, recipe, [examples[i].prompt for i in pending], record)
        run.seconds = time.perf_counter() - started
        return run

    assert system.endpoint is not None
    policy = Policy(**dataclasses.asdict(recipe.evaluation.endpoints))
    client = Client(system.endpoint, policy, recipe.generation, api_key(system), api_key_env=system.api_key_env)
    stop, prefix = recipe.generation.stop, recipe.output.target_prefix
    position = {example_index: n for n, example_index in enumerate(pending)}

    def on_answer(index: int, answer: Answer) -> None:
        run.retries += answer.attempts - 1
        if answer.text is None:
            run.errors[index] = answer.error or "failed"
            return
        record([position[index]], [{"completion": answer.text, "prediction": finish_output(answer.text, stop, prefix)}])

    started = time.perf_counter()
    ask_all(client, [(i, examples[i].prompt) for i in pending], on_answer)
    run.seconds = time.perf_counter() - started
    return run


def _error_kind(message: str) -> str:
    """`HTTP 500: <body>` -> `HTTP 500`; `timeout after 3 s` -> `timeout`."""
    head = message.split(":", 1)[0]
    return "timeout" if head.startswith("timeout") else head


# --- scoring and output ---------------------------------------------------------------------


def check_golds(metric: Metric, subset: EvaluationSet) -> None:
    """Refuse, before any model runs, gold answers the metric cannot score."""
    problems = [(ex.row, p) for ex in subset.examples if (p := metric.check_gold(ex.target)) is not None]
    if problems:
        shown = "; ".join(f"row {row}: {problem}" for row, problem in problems[:3])
        raise UserError(
            f"evaluation.metric {metric.name} cannot score the gold answers of {len(problems)} of "
            f"{len(subset.examples)} {subset.split} rows ({shown}); fix the data or choose another metric"
        )


def score_system(
    metric: Metric, examples: Sequence[Example], journal: Journal, keys: Sequence[str], errors: dict[int, str]
) -> tuple[float, list[dict[str, Any]], int]:
    """The corpus score, one prediction row per example, and the count of unparseable outputs.
    An example without an answer (a failed request) scores 0."""
    rows: list[dict[str, Any]] = []
    scores: list[Score] = []
    outputs: list[str] = []
    unparseable = 0
    for i, (example, key) in enumerate(zip(examples, keys, strict=True)):
        record = journal.records.get(key)
        row: dict[str, Any] = {"row": example.row, "prompt": example.prompt, "gold": example.target}
        if record is None:
            score = Score(0.0)
            outputs.append("")
            row |= {"prediction": None, "score": 0.0, "error": errors.get(i, "not answered")}
        else:
            prediction = str(record["prediction"])
            score = metric.score(prediction, example.target)
            outputs.append(prediction)
            unparseable += not score.parsed
            row |= {"prediction": prediction, "score": score.value, "parsed": score.parsed}
            if "log_likelihoods" in record:
                row["log_likelihoods"] = record["log_likelihoods"]
        scores.append(score)
        rows.append(row)
    return metric.aggregate([e.target for e in examples], outputs, scores), rows, unparseable


def default_output_dir(loaded: LoadedRecipe, adapter: Path | None) -> Path:
    """Inside the run directory when --adapter is one, else evals/<name>-<timestamp>."""
    from lora_recipes.training.run_dir import new_run_dir_name

    run_dir = find_adapter(adapter)[1] if adapter is not None else None
    if run_dir is not None:
        return new_run_dir_name("eval", run_dir)
    return new_run_dir_name(loaded.name, Path("evals"))


def evaluate(
    loaded: LoadedRecipe,
    subset: EvaluationSet,
    systems: Sequence[System],
    output_dir: Path,
    *,
    progress: OnAnswered | None = None,
    model_loader: Callable[[LoadedRecipe], tuple[Any, Any]] = load_local,
) -> dict[str, Any]:
    """Answer, score and write everything; returns the content of eval.json."""
    recipe = loaded.recipe
    if not subset.examples:
        raise UserError(f"the {subset.split} split has no examples to evaluate")
    name = metric_name(recipe.evaluation.metric, recipe.output.type)
    metric = build_metric(name, subset.labels or recipe.output.labels)
    check_golds(metric, subset)
    for system in systems:
        api_key(system)  # a missing key fails now, not after the local models ran
    output_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)

    models = _LocalModels(loaded, model_loader)
    summaries: dict[str, dict[str, Any]] = {}
    scores: dict[str, dict[str, float | None]] = {}
    for system in systems:
        value, summaries[system.name] = _score_system(system, loaded, subset, metric, output_dir, models, progress)
        scores[system.name] = {name: value}

    result = _eval_document(loaded, subset, name, scores, summaries, started)
    write_json_atomic(output_dir / EVAL_FILE, result)
    write_text_atomic(output_dir / TABLE_FILE, render_table(result))
    for system in systems:  # the scores go into the scored adapter's model card
        if system.adapter_dir is not None:
            model_card.add_evaluation(system.adapter_dir, result, recipe, system=system.name)
    return result


class _LocalModels:
    """The base model, loaded once on first use, with the adapter of the system asked for."""

    def __init__(self, loaded: LoadedRecipe, loader: Callable[[LoadedRecipe], tuple[Any, Any]]) -> None:
        self.loaded, self.loader = loaded, loader
        self.model: tuple[Any, Any] | None = None

    def __call__(self, system: System) -> tuple[Any, Any]:
        from lora_recipes.model import loading as models

        if self.model is None:
            self.model = self.loader(self.loaded)
        model, tokenizer = self.model
        if system.adapter_dir is not None:
            try:
                model = models.load_adapter(model, system.adapter_dir)
            except (RuntimeError, ValueError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"--adapter {system.adapter_dir}: it does not fit the base model {self.loaded.recipe.base_model} "
                    f"({first}); evaluate with the recipe it was trained from (a run directory keeps it as "
                    "recipe.resolved.yaml)"
                ) from None
            self.model = (model, tokenizer)
        return model, tokenizer


def _score_system(
    system: System,
    loaded: LoadedRecipe,
    subset: EvaluationSet,
    metric: Metric,
    output_dir: Path,
    models: _LocalModels,
    progress: OnAnswered | None,
) -> tuple[float | None, dict[str, Any]]:
    """One system's answers (continuing its journal), its score (None when nothing was answered,
    not 0), its predictions file and its summary for eval.json."""
    recipe = loaded.recipe
    fp = fingerprint(system, recipe)
    keys = [_hash([fp, ex.row, ex.prompt]) for ex in subset.examples]
    journal = Journal(output_dir / ANSWERS_DIR / f"{system.slug}.jsonl")
    run = _run_system(system, recipe, subset.examples, journal, keys, models, progress)
    value, rows, unparseable = score_system(metric, subset.examples, journal, keys, run.errors)
    predictions = f"predictions-{system.slug}.jsonl"
    write_text_atomic(output_dir / predictions, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    answered = len(rows) - len(run.errors)
    summary = {
        "kind": system.kind,
        "description": system.description,
        "mode": mode_of(system, recipe),
        "n": len(rows),
        "answered": answered,
        "resumed": answered - run.fresh,
        "failures": len(run.errors),
        "unparseable": unparseable,
        "retries": run.retries,
        "errors": dict(Counter(_error_kind(e) for e in run.errors.values())),
        "first_error": run.errors[min(run.errors)] if run.errors else None,
        "seconds": round(run.seconds, 3),
        "load_seconds": round(run.load_seconds, 3),
        "examples_per_second": round(run.fresh / run.seconds, 3) if run.fresh and run.seconds else None,
        "predictions": predictions,
    }
    if system.endpoint is not None:
        summary |= {
            "endpoint": system.endpoint.public_url,
            "model": system.endpoint.model,
            "protocol": system.endpoint.protocol,
            "api_key_env": system.api_key_env,
        }
    return (value if answered else None), summary


def _eval_document(
    loaded: LoadedRecipe,
    subset: EvaluationSet,
    metric: str,
    scores: dict[str, dict[str, float | None]],
    summaries: dict[str, dict[str, Any]],
    started: dt.datetime,
) -> dict[str, Any]:
    """eval.json's content: the scores and summaries with the data, the settings and LoRA Land's
    reference rows for the recipe's task."""
    recipe = loaded.recipe
    ref = reference_scores(recipe.evaluation.reference_task)
    return {
        "name": loaded.name,
        "recipe": str(loaded.path),
        "metric": metric,
        "mode": recipe.evaluation.mode,
        "n": len(subset.examples),
        "scores": scores,
        "failures": {k: v["failures"] for k, v in summaries.items()},
        "unparseable": {k: v["unparseable"] for k, v in summaries.items()},
        "systems": summaries,
        "data": {"split": subset.split, "subset_hash": subset.hash, "rows": len(subset.examples)},
        "generation": loaded.resolved["generation"],
        "reference": None
        if ref is None
        else {
            "task": ref.task,
            "metric": ref.metric,
            "comparable": ref.comparable_with(metric),
            "rows": [[label, value] for label, value in ref.rows()],
        },
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 3),
        "lora_recipes_version": __version__,
    }


def failed_systems(result: dict[str, Any]) -> list[str]:
    """The systems of an eval.json content none of whose examples got an answer."""
    return [name for name, system in result["systems"].items() if system["failures"] and not system["answered"]]


def failure_lines(result: dict[str, Any]) -> list[str]:
    """One line per system with failed requests, for the terminal: `error:` when none was
    answered, else `warning:`; how many failed, of which kinds, and the first error's message."""
    lines = []
    for name, system in result["systems"].items():
        if not system["failures"]:
            continue
        kinds = ", ".join(f"{kind} x{count}" for kind, count in system["errors"].items())
        if system["answered"]:
            head = f"warning: {name}: {system['failures']} of {system['n']} requests failed and score 0 ({kinds})"
        else:
            head = f"error: {name}: all {system['n']} requests failed, so it has no score ({kinds})"
        lines.append(f"{head}; first: {system.get('first_error')}")
    return lines


class Interrupted(Exception):
    """Ctrl-C during an evaluation: the answers so far are in `output_dir` (None when it was
    pressed before any was asked)."""

    def __init__(self, output_dir: Path | None):
        super().__init__("interrupted")
        self.output_dir = output_dir


# --- the command ------------------------------------------------------------------------------


class ProgressLine:
    """`system: answered/total` on stderr: redrawn in place on a terminal; elsewhere printed every
    `every` seconds and when a system completes, so logs stay short."""

    def __init__(self, stream: Any, every: float = 30.0):
        self.stream = stream
        self.every = every
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last = 0.0

    def __call__(self, system: str, done: int, total: int) -> None:
        line = f"{system}: {done}/{total}"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if done == total else ""))
        elif done == total or now - self.last >= self.every:
            self.stream.write(line + "\n")
            self.last = now
        self.stream.flush()


def evaluate_recipe(
    recipe_path: Path,
    *,
    overrides: Sequence[str],
    data_path: str | None,
    adapter: Path | None,
    base: bool,
    endpoints: Sequence[str],
    models: Sequence[str],
    chat: bool,
    api_key_envs: Sequence[str],
    limit: int | None,
    output: Path | None,
    progress: OnAnswered | None = None,
) -> tuple[dict[str, Any], Path]:
    """What `lora-recipes evaluate` does; returns eval.json's content and the output folder.
    Ctrl-C comes out as `Interrupted`, naming the folder that holds the answers so far."""
    from lora_recipes.data.pipeline import evaluation_examples
    from lora_recipes.recipe.loader import load_recipe

    for url in endpoints:
        check_endpoint_url(url)  # before the recipe's data is read
    loaded = load_recipe(recipe_path, overrides, data_path)
    if len(endpoints) != len(models):
        raise UserError(
            f"--endpoint is given {len(endpoints)} times and --model {len(models)} times: "
            "give one --model NAME per --endpoint URL, in the same order"
        )
    systems = plan_systems(
        adapter=adapter,
        base=base,
        endpoints=list(zip(endpoints, models, strict=True)),
        chat=chat,
        api_key_envs=api_key_envs,
        base_model=model_card.base_label(loaded.recipe),
    )
    output_dir: Path | None = None
    try:
        subset = evaluation_examples(loaded, limit=limit)
        output_dir = output if output is not None else default_output_dir(loaded, adapter)
        return evaluate(loaded, subset, systems, output_dir, progress=progress), output_dir
    except KeyboardInterrupt:
        raise Interrupted(output_dir if output_dir is not None and output_dir.is_dir() else None) from None
