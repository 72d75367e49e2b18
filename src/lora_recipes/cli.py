"""The `lora-recipes` command line.

Heavy libraries (torch, transformers, peft, bitsandbytes, accelerate, datasets) are imported inside
the commands that need them, never at module level: `validate` and `plan --no-data` must start in
a fraction of a second.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lora_recipes import __version__
from lora_recipes.errors import LoraRecipesError, RecipeInvalid

app = typer.Typer(
    name="lora-recipes",
    help="Declarative QLoRA fine-tuning: one YAML recipe per task.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Format(str, Enum):
    text = "text"
    json = "json"


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY.PATH=VALUE",
        help="Override one recipe value, parsed as YAML (repeatable): --set trainer.learning_rate=1e-4",
    ),
]
DataOption = Annotated[
    str | None,
    typer.Option("--data", metavar="PATH", help="Use this local file or folder as the data source."),
]
FormatOption = Annotated[Format, typer.Option("--format", help="text for people, json for machines.")]


def fail(exc: LoraRecipesError) -> typer.Exit:
    """Print a user-facing error (no traceback) and return the exit to raise."""
    if isinstance(exc, RecipeInvalid):
        for issue in exc.issues:
            typer.echo(str(issue), err=True)
        n = len(exc.issues)
        typer.echo(f"{n} error{'s' if n != 1 else ''}", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lora-recipes {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Declarative QLoRA fine-tuning: one YAML recipe per task.

    Start with `lora-recipes validate recipes/*.yaml`, then `lora-recipes plan RECIPE`.
    """


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Recipe files to check.", show_default=False)],
    format: FormatOption = Format.text,
) -> None:
    """Check recipes against the schema and report every mistake with its line.

    Also prints warnings and notes, with their lines: what a server in serving.targets needs a
    flag for (--max-lora-rank 64) or runs slower. Exit code 0 when all are valid (warnings
    included), 2 when any is not.

    Example: lora-recipes validate recipes/*.yaml
    """
    from lora_recipes.recipe.loader import load_recipe

    results: list[dict[str, Any]] = []
    for file in files:
        try:
            notices = load_recipe(file).notices
            results.append(
                {
                    "file": str(file),
                    "valid": True,
                    "errors": [],
                    "warnings": [n.to_json() for n in notices],
                    "lines": [str(n) for n in notices],
                }
            )
        except RecipeInvalid as exc:
            results.append(
                {
                    "file": str(file),
                    "valid": False,
                    "errors": [i.to_json() for i in exc.issues],
                    "warnings": [],
                    "lines": [str(i) for i in exc.issues],
                }
            )
        except LoraRecipesError as exc:
            results.append(
                {
                    "file": str(file),
                    "valid": False,
                    "errors": [
                        {
                            "file": str(file),
                            "line": None,
                            "col": None,
                            "path": "",
                            "message": str(exc).removeprefix(f"{file}: "),
                            "hint": None,
                        }
                    ],
                    "warnings": [],
                    "lines": [str(exc)],
                }
            )
    invalid = [r for r in results if not r["valid"]]
    errors = sum(len(r["errors"]) for r in invalid)
    severities = [n["severity"] for r in results for n in r["warnings"]]
    if format is Format.json:
        for r in results:
            r.pop("lines", None)
        typer.echo(
            json.dumps(
                {
                    "files": results,
                    "valid": len(results) - len(invalid),
                    "invalid": len(invalid),
                    "errors": errors,
                    "warnings": len(severities),
                },
                indent=2,
            )
        )
    else:
        for r in results:
            for line in r["lines"]:
                typer.echo(line)
        noun = "recipe" if len(results) == 1 else "recipes"
        counts = [f"{errors} error{'s' if errors != 1 else ''}"] if invalid else []
        for severity in ("warning", "note"):
            n = severities.count(severity)
            counts += [f"{n} {severity}{'s' if n != 1 else ''}"] if n else []
        summary = f" ({', '.join(counts)})" if counts else ""
        if invalid:
            typer.echo(f"{len(invalid)} of {len(results)} {noun} invalid{summary}")
        else:
            typer.echo(f"{len(results)} {noun} valid{summary}")
    if invalid:
        raise typer.Exit(2)


@app.command()
def plan(
    recipes: Annotated[
        list[Path], typer.Argument(help="The recipe file; several make a fleet plan.", show_default=False)
    ],
    set_: SetOption = None,
    data: DataOption = None,
    no_data: Annotated[
        bool, typer.Option("--no-data", help="Do not read data or tokenizer; plan from the recipe alone.")
    ] = False,
    format: FormatOption = Format.text,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", metavar="DIR", help="Fleet plan: each recipe's data is its folder in DIR."),
    ] = None,
) -> None:
    """Compile a recipe into a training plan: resolved values, steps, time, memory and cost.

    By default the data is read (data.dataset, or --data PATH) and tokenized with the base model's
    tokenizer: rows per split, token lengths, the max-length cut-off and what it truncates and
    drops. When the tokenizer cannot be had (offline), token counts are approximated and the plan
    says so. --no-data plans from the recipe alone, in a fraction of a second.

    Several recipes (or --data-root) give the fleet plan: one row per recipe (rows, steps,
    GPU-hours, cost, peak memory, fits) and the totals; an invalid recipe is listed with its
    errors and the exit code is 2.

    Example: lora-recipes plan recipes/glue_sst2.yaml --data ../shared/data/sst2 --format json
    """
    if len(recipes) > 1 or data_root is not None:
        from lora_recipes.fleet.plan import fleet_plan_command

        try:
            text, code = fleet_plan_command(
                recipes, set_ or (), data=data, data_root=data_root, no_data=no_data, as_json=format is Format.json
            )
        except LoraRecipesError as exc:
            raise fail(exc) from None
        typer.echo(text, nl=False)
        raise typer.Exit(code)
    recipe = recipes[0]
    import yaml

    from lora_recipes.errors import UserError
    from lora_recipes.planning.plan import build_plan
    from lora_recipes.planning.render import render_plan_text
    from lora_recipes.recipe.loader import load_recipe

    try:
        if no_data and data is not None:
            raise UserError("--data reads data and --no-data does not: use one of them")
        loaded = load_recipe(recipe, set_ or (), data)
        if no_data:
            result = build_plan(loaded)
        else:
            from lora_recipes.data.pipeline import plan_data

            result = build_plan(loaded, data=plan_data(loaded))
    except LoraRecipesError as exc:
        raise fail(exc) from None
    if format is Format.json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        typer.echo(
            render_plan_text(result, yaml.safe_dump(loaded.resolved, sort_keys=False, allow_unicode=True)), nl=False
        )


@app.command()
def train(
    recipe: Annotated[
        Path | None, typer.Argument(help="The recipe file (leave it out with --resume).", show_default=False)
    ] = None,
    set_: SetOption = None,
    data: DataOption = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir", metavar="DIR", help="Write the run here instead of <output_directory>/<name>-<time>."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", metavar="RUN_DIR", help="Continue this run from its newest checkpoint."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Empty a non-empty --run-dir first.")] = False,
    stop_at_step: Annotated[
        int | None,
        typer.Option(
            "--stop-at-step",
            metavar="N",
            min=1,
            help="Write a checkpoint and stop once N optimizer steps are done (continue with --resume).",
        ),
    ] = None,
) -> None:
    """Fine-tune the recipe's base model (4-bit QLoRA by default) into a new run directory.

    The run directory holds the adapter, the resolved recipe, the plan, metrics, a loss plot and a
    cost report. Ctrl-C writes a checkpoint and exits with code 130; --resume continues.
    Data parallel: accelerate launch --num_processes N -m lora_recipes train RECIPE

    Example: lora-recipes train recipes/jigsaw.yaml --set trainer.train_steps=20
    """
    from lora_recipes.planning.cost import summary_line
    from lora_recipes.training.train import train_command

    try:
        result = train_command(
            recipe,
            set_ or [],
            data,
            run_dir=run_dir,
            resume=resume,
            overwrite=overwrite,
            stop_at_step=stop_at_step,
            command_line=tuple(sys.argv),
        )
    except LoraRecipesError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)  # training.train.Interrupted names the run it leaves
        if run_dir is None:
            typer.echo("interrupted before a run directory was made; nothing was saved", err=True)
        else:
            typer.echo(f"interrupted; the newest checkpoint is kept (continue with --resume {run_dir})", err=True)
        raise typer.Exit(130) from None
    if not result.main_process:  # data parallel: the main process speaks for the run
        raise typer.Exit(130 if result.interrupted else 0)
    typer.echo(f"run directory: {result.run_dir}")
    if result.report is not None:
        typer.echo(summary_line(result.report))
    else:
        typer.echo(
            f"stopped at step {result.step:,} of {result.total_steps:,}; continue with --resume {result.run_dir}"
        )
        if result.interrupted:
            raise typer.Exit(130)


@app.command()
def evaluate(
    recipe: Annotated[Path, typer.Argument(help="The recipe file.", show_default=False)],
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", metavar="PATH", help="A PEFT adapter folder or a training run directory."),
    ] = None,
    base: Annotated[bool, typer.Option("--base", help="Also score the base model alone.")] = False,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--endpoint",
            metavar="URL",
            help="An OpenAI-compatible endpoint (http://host:8000/v1) to score; repeatable, one --model each.",
        ),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", metavar="NAME", help="Model name to ask each --endpoint for.")
    ] = None,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat", help="Use the chat protocol (a URL ending in /chat/completions or /completions says it itself)."
        ),
    ] = False,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key-env",
            metavar="VAR",
            help="Environment variable holding an endpoint's API key; once per --endpoint, - for none.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, metavar="N", help="Score only the first N examples.")
    ] = None,
    data: DataOption = None,
    set_: SetOption = None,
    format: FormatOption = Format.text,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", metavar="DIR", help="Folder for eval.json, predictions and table; reuse it to resume."
        ),
    ] = None,
) -> None:
    """Score an adapter, its base model and endpoints on the recipe's fixed evaluation subset.

    Writes eval.json, predictions-<system>.jsonl and table.md (default folder: inside the run
    directory, or evals/<name>-<time>), and prints the table beside LoRA Land's scores. Running
    again with the same --output asks only for the answers still missing. Exit code 1 when a system
    got no answer at all (a failed request of a system that answered others scores 0 and is
    counted); Ctrl-C keeps the answers so far and exits with code 130.

    Example: lora-recipes evaluate recipes/glue_sst2.yaml --adapter runs/glue_sst2-20250101-120000 --base
    """
    from lora_recipes.evaluation.evaluate import (
        Interrupted,
        ProgressLine,
        evaluate_recipe,
        failed_systems,
        failure_lines,
    )
    from lora_recipes.evaluation.table import render_table

    try:
        result, output_dir = evaluate_recipe(
            recipe,
            overrides=set_ or (),
            data_path=data,
            adapter=adapter,
            base=base,
            endpoints=endpoint or (),
            models=model or (),
            chat=chat,
            api_key_envs=api_key_env or (),
            limit=limit,
            output=output,
            progress=ProgressLine(sys.stderr),
        )
    except LoraRecipesError as exc:
        raise fail(exc) from None
    except (Interrupted, KeyboardInterrupt) as exc:
        saved = exc.output_dir if isinstance(exc, Interrupted) else None
        if saved is None:
            typer.echo("interrupted before any answer was asked; nothing was saved", err=True)
        else:
            typer.echo(
                f"interrupted; the answers so far are saved in {saved}: run the same command again with "
                f"--output {saved} to resume (only the missing answers are asked)",
                err=True,
            )
        raise typer.Exit(130) from None
    if format is Format.json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(render_table(result), nl=False)
        typer.echo(f"\nwrote {output_dir}/eval.json, table.md and predictions-*.jsonl")
    # Some failed requests: a result with a note (exit 0). A system with no answer at all: exit 1.
    problems = failure_lines(result)
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        typer.echo(f"run the same command again with --output {output_dir} to ask only for what failed", err=True)
    if failed_systems(result):
        raise typer.Exit(1)


@app.command()
def predict(
    recipe: Annotated[Path, typer.Argument(help="The recipe file.", show_default=False)],
    adapter: Annotated[
        Path, typer.Option("--adapter", metavar="PATH", help="A PEFT adapter folder or a training run directory.")
    ],
    input_file: Annotated[
        str, typer.Option("--input", metavar="FILE", help="JSONL rows to answer; - for stdin.")
    ] = "-",
    output_file: Annotated[
        str, typer.Option("--output", metavar="FILE", help="Where the rows go with their prediction; - for stdout.")
    ] = "-",
    set_: SetOption = None,
) -> None:
    """Answer JSONL rows with an adapter: each row gets the recipe's prompt, and comes back with a
    `prediction` field.

    Example: lora-recipes predict recipes/glue_sst2.yaml --adapter runs/glue_sst2-20250101-120000 < rows.jsonl
    """
    from lora_recipes.evaluation.predict import predict_recipe

    try:
        written = predict_recipe(
            recipe, overrides=set_ or (), adapter=adapter, input_path=input_file, output_path=output_file
        )
    except LoraRecipesError as exc:
        raise fail(exc) from None
    if output_file != "-":
        typer.echo(f"wrote {written} rows to {output_file}", err=True)


@app.command()
def schema() -> None:
    """Print the recipe JSON Schema (for editors and yaml-language-server).

    Example: lora-recipes schema > recipe.schema.json
    """
    from lora_recipes.recipe.schema import schema_text

    sys.stdout.write(schema_text())


@app.command("check-adapter")
def check_adapter(
    path: Annotated[
        Path,
        typer.Argument(help="A PEFT adapter folder, a run directory, or an adapter_config.json.", show_default=False),
    ],
    targets: Annotated[
        str, typer.Option("--targets", metavar="SERVERS", help="Servers to check for, comma-separated (vllm, lorax).")
    ] = "vllm,lorax",
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            metavar="MODEL",
            help="The model the server runs, when not the adapter's own base_model_name_or_path.",
        ),
    ] = None,
    format: FormatOption = Format.text,
) -> None:
    """Check that vLLM and LoRAX serve a saved adapter: what each would refuse or run slower, and
    the flags to start it with (--max-lora-rank 64). The same checks `validate` runs on a recipe.

    Exit code 0 when every target serves it (with flags or notes), 1 when a target refuses it,
    2 when the adapter_config.json is missing or unreadable.

    Example: lora-recipes check-adapter runs/jigsaw-20261201-101500 --targets vllm
    """
    from lora_recipes.adapter_check import check_adapter_path, parse_targets, render_text

    try:
        report = check_adapter_path(path, parse_targets(targets), base)
    except LoraRecipesError as exc:
        raise fail(exc) from None
    if format is Format.json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(render_text(report), nl=False)
    if report.refused_by():
        raise typer.Exit(1)


@app.command()
def export(
    run_dir: Annotated[
        Path,
        typer.Argument(metavar="RUN_DIR", help="A training run directory, or its adapter/ folder.", show_default=False),
    ],
    merged: Annotated[
        Path,
        typer.Option(
            "--merged",
            metavar="OUT",
            help="Write the adapter merged into its base model here: a plain transformers folder.",
            show_default=False,
        ),
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export in OUT (never files it did not write).")
    ] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            metavar="DTYPE",
            help="float32, bfloat16 or float16. Default: model_parameters.dtype, else a 4-bit recipe's compute "
            "dtype, else float32 on a CPU.",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", metavar="DEVICE", help="cpu, cuda or cuda:N. Default: the recipe's trainer.device."),
    ] = None,
) -> None:
    """Merge a run's adapter into its base model and save the result as one model folder.

    The base is loaded unquantized (never 4-bit) in the recipe's compute dtype, the adapter merged
    into its weights, and OUT gets safetensors weights, the tokenizer, the generation config, a
    model card (README.md) and lora_recipes_export.json. OUT appears whole or not at all; a
    non-empty OUT is refused unless --overwrite, which replaces only an earlier export.

    Example: lora-recipes export runs/jigsaw-20261201-101500 --merged models/jigsaw-merged
    """
    from lora_recipes.errors import UserError
    from lora_recipes.recipe.loader import load_recipe
    from lora_recipes.training.run_dir import RunLayout

    try:
        if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"--dtype {dtype}: use float32, bfloat16 or float16")
        if device is not None and device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise UserError(f"--device {device}: use cpu, cuda or cuda:N")
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        is_adapter = (run_dir / "adapter_config.json").is_file()
        layout = RunLayout(run_dir.parent if is_adapter else run_dir)
        adapter_dir = run_dir if is_adapter else layout.adapter
        if not layout.resolved_recipe.is_file():
            raise UserError(
                f"{run_dir}: not a run directory (nor the adapter folder of one): export needs the run's "
                f"{layout.resolved_recipe.name} beside {layout.adapter.name}/"
            )
        if not (adapter_dir / "adapter_config.json").is_file():
            if (layout.model / "config.json").is_file():
                raise UserError(f"{run_dir}: a full fine-tuning run; its {layout.model.name}/ is already a whole model")
            raise UserError(f"{run_dir}: the run has no adapter yet ({layout.adapter.name}/adapter_config.json)")
        from lora_recipes.model.export import check_destination, export_dtype, export_merged

        check_destination(merged, overwrite=overwrite)  # before seconds of loading
        loaded = load_recipe(layout.resolved_recipe)
        recipe = loaded.recipe

        from lora_recipes.model import loading as models
        from lora_recipes.model.source import load_options, recipe_model_source
        from lora_recipes.training import model_card

        on = device if device is not None and device.startswith("cuda:") else None
        on = on or models.resolve_device(device or recipe.trainer.device)
        chosen = dtype or export_dtype(
            recipe_dtype=recipe.model_parameters.dtype,
            bits=recipe.quantization.bits,
            compute_dtype=recipe.quantization.bnb_4bit_compute_dtype,
            device_type=on.split(":")[0],
        )
        models.quiet_transformers()
        info = export_merged(
            recipe_model_source(loaded),
            adapter_dir,
            merged,
            load_options=load_options(loaded),
            dtype=chosen,
            device=on,
            overwrite=overwrite,
            name=loaded.name,
            run=layout.root.resolve().name,
            say=lambda line: typer.echo(line, err=True),
            card=lambda info: model_card.export_card(layout.root, info),
        )
    except LoraRecipesError as exc:
        raise fail(exc) from None
    typer.echo(f"merged model: {merged} ({chosen}, base {info.base.id})")


class FleetBackend(str, Enum):
    local = "local"
    ray = "ray"


@app.command()
def fleet(
    recipes: Annotated[
        list[str],
        typer.Argument(help="Recipe files; or `status DIR` for a fleet's state.", show_default=False),
    ],
    runs: Annotated[
        Path | None,
        typer.Option("--runs", metavar="DIR", help="The fleet folder: DIR/<name> per recipe, fleet.json, leaderboard."),
    ] = None,
    set_: SetOption = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", metavar="NAME=PATH", help="This recipe's data (repeatable), instead of its own."),
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            metavar="DIR",
            help="Each recipe's data is its folder in DIR (DIR/<name>, DIR/<config>, ...).",
        ),
    ] = None,
    data_map: Annotated[
        Path | None,
        typer.Option("--data-map", metavar="FILE", help="A YAML mapping of recipe names to data paths."),
    ] = None,
    base: Annotated[bool, typer.Option("--base", help="Also score each recipe's base model.")] = False,
    backend: Annotated[
        FleetBackend, typer.Option("--backend", help="local: this machine; ray: a Ray cluster or a local instance.")
    ] = FleetBackend.local,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel", min=1, metavar="N", help="Jobs at once (default: one per GPU; 1 on a CPU; Ray: no cap)."
        ),
    ] = None,
    cpus_per_job: Annotated[
        int | None,
        typer.Option(
            "--cpus-per-job", min=1, metavar="N", help="CPU threads per job (Ray: the CPUs each task asks for)."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", metavar="ADDR", help="The Ray cluster (default $RAY_ADDRESS, else a local one)."),
    ] = None,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, metavar="N", help="Tries per recipe before it is reported failed.")
    ] = 3,
    format: FormatOption = Format.text,
) -> None:
    """Train and score many recipes at once, then write the leaderboard.

    Each recipe is a job: `train` into DIR/<name>, then `evaluate` into DIR/<name>/eval, each in a
    child process (its output in DIR/<name>/fleet.log). Running the same command again skips
    finished runs, resumes interrupted ones from their checkpoints and retries failed ones (up to
    --max-attempts; a mistake in a recipe or its data is not retried). One recipe's failure never
    stops the others. Ctrl-C or SIGTERM checkpoints every running job and exits 130.
    `lora-recipes fleet status DIR` shows the state (DIR/fleet.json). Exit code 0 when every
    recipe finished, 1 when one failed, 2 when one is invalid.

    Example: lora-recipes fleet recipes/glue_*.yaml --runs runs/glue --data-root ../shared/data --base
    """
    from lora_recipes.errors import UserError

    if recipes[0] == "status" and not Path("status").is_file():
        from lora_recipes.fleet.status import load_state, render_status

        if len(recipes) != 2:
            raise fail(UserError("usage: lora-recipes fleet status DIR"))
        folder = Path(recipes[1])
        try:
            state = load_state(folder)
        except LoraRecipesError as exc:
            raise fail(exc) from None
        if format is Format.json:
            typer.echo(json.dumps(state.to_json(), indent=2))
        else:
            typer.echo(render_status(state, folder), nl=False)
        return
    from lora_recipes.fleet.driver import FleetOptions, run_fleet
    from lora_recipes.fleet.recipes import DataOptions

    try:
        if runs is None:
            raise UserError(
                "give the fleet folder: --runs DIR (run directories, fleet.json and the leaderboard go there)"
            )
        options = FleetOptions(
            runs=runs,
            overrides=tuple(set_ or ()),
            data=DataOptions(tuple(data or ()), data_map, data_root),
            base=base,
            backend=backend.value,
            parallel=parallel,
            ray_address=ray_address,
            max_attempts=max_attempts,
            cpus_per_job=cpus_per_job,
        )
        code = run_fleet([Path(r) for r in recipes], options, command=tuple(sys.argv))
    except LoraRecipesError as exc:
        raise fail(exc) from None
    raise typer.Exit(code)


@app.command()
def leaderboard(
    runs: Annotated[Path, typer.Argument(metavar="DIR", help="A fleet folder (fleet --runs DIR).", show_default=False)],
    format: FormatOption = Format.text,
) -> None:
    """Write and print a fleet's leaderboard: tasks by systems (base, adapter, endpoints, LoRA
    Land's Mistral-7B fine-tuned, GPT-4 and GPT-3.5), the mean over tasks, per adapter its cost,
    GPU-hours, tokens and training time, and the commands that serve every adapter from one GPU.

    Writes DIR/leaderboard.md, .json, .png and .html (one self-contained page with a sortable
    table). Missing values are shown as such (a fleet still running, or a failed recipe).

    Example: lora-recipes leaderboard runs/glue
    """
    from lora_recipes.errors import UserError
    from lora_recipes.fleet.leaderboard import collect, render_markdown, write_leaderboard

    try:
        if not runs.is_dir():
            raise UserError(f"{runs}: no such folder")
        written = write_leaderboard(runs)
    except LoraRecipesError as exc:
        raise fail(exc) from None
    if format is Format.json:
        typer.echo(json.dumps(collect(runs), indent=2))
    else:
        typer.echo(render_markdown(collect(runs)), nl=False)
        typer.echo(f"\nwrote {', '.join(str(p) for p in written)}")


# --- import: other tools' configs as recipes -------------------------------------------------

import_app = typer.Typer(
    name="import",
    help="Turn a Ludwig or Axolotl fine-tuning config into a recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(import_app, name="import")

ImportConfig = Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="The config to import.", show_default=False)]
ImportOutput = Annotated[
    Path | None,
    typer.Option("-o", "--output", metavar="RECIPE.yaml", help="Write the recipe here (default: standard output)."),
]
ImportMinimal = Annotated[
    bool, typer.Option("--minimal", help="Leave out values equal to the recipe defaults (shown by plan).")
]
ImportForce = Annotated[bool, typer.Option("--force", help="Replace an existing -o file.")]
ImportDataset = Annotated[
    str | None,
    typer.Option("--dataset", metavar="PATH_OR_ID", help="The recipe's data.dataset, when the config names none."),
]


def _import_command(
    tool: str, config: Path, output: Path | None, minimal: bool, force: bool, dataset: str | None
) -> None:
    from lora_recipes.importers import import_config

    try:
        result = import_config(tool, config, output=output, minimal=minimal, force=force, dataset=dataset)
    except LoraRecipesError as exc:
        raise fail(exc) from None
    for notice in result.notices:
        typer.echo(str(notice), err=True)
    warnings = sum(n.severity == "warning" for n in result.notices)
    notes = len(result.notices) - warnings
    summary = (
        f"{result.carried} settings carried, {result.uncarried} not carried; "
        f"{warnings} warning{'s' if warnings != 1 else ''}, {notes} note{'s' if notes != 1 else ''}"
    )
    if output is None:
        typer.echo(result.text, nl=False)
        typer.echo(summary, err=True)
    else:
        typer.echo(f"wrote {output} ({summary})", err=True)


@import_app.command("ludwig")
def import_ludwig(
    config: ImportConfig,
    output: ImportOutput = None,
    minimal: ImportMinimal = False,
    force: ImportForce = False,
    dataset: ImportDataset = None,
) -> None:
    """Import a Ludwig LLM config (model_type: llm; LoRA Land's format) as a recipe.

    Every setting with an equivalent is carried, and Ludwig's defaults where they differ from the
    recipe's are written out, so the recipe trains what Ludwig would have. A setting without an
    equivalent is printed as a warning with its line and kept as a comment in the recipe. Exit
    code 2, with the line, for a config that cannot become a recipe.

    Example: lora-recipes import ludwig sst2.yaml -o recipes/sst2.yaml --dataset nyu-mll/glue
    """
    _import_command("ludwig", config, output, minimal, force, dataset)


@import_app.command("axolotl")
def import_axolotl(
    config: ImportConfig,
    output: ImportOutput = None,
    minimal: ImportMinimal = False,
    force: ImportForce = False,
    dataset: ImportDataset = None,
) -> None:
    """Import an Axolotl LoRA/QLoRA config (one dataset: alpaca, input_output or a type: mapping).

    Every setting with an equivalent is carried, and Axolotl's defaults where they differ from the
    recipe's are written out. A setting without an equivalent is printed as a warning with its
    line and kept as a comment in the recipe. Exit code 2, with the line, for a config that cannot
    become a recipe (chat datasets, several datasets, completion data).

    Example: lora-recipes import axolotl examples/mistral/qlora.yml -o recipes/alpaca.yaml
    """
    _import_command("axolotl", config, output, minimal, force, dataset)


def run() -> None:
    app()
