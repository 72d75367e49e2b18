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

    Exit code 0 when all are valid, 2 when any is not.

    Example: lora-recipes validate recipes/*.yaml
    """
    from lora_recipes.recipe.loader import load_recipe

    results: list[dict[str, Any]] = []
    for file in files:
        try:
            load_recipe(file)
            results.append({"file": str(file), "valid": True, "errors": []})
        except RecipeInvalid as exc:
            results.append(
                {
                    "file": str(file),
                    "valid": False,
                    "errors": [i.to_json() for i in exc.issues],
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
                    "lines": [str(exc)],
                }
            )
    invalid = [r for r in results if not r["valid"]]
    errors = sum(len(r["errors"]) for r in invalid)
    if format is Format.json:
        for r in results:
            r.pop("lines", None)
        typer.echo(
            json.dumps(
                {"files": results, "valid": len(results) - len(invalid), "invalid": len(invalid), "errors": errors},
                indent=2,
            )
        )
    else:
        for r in invalid:
            for line in r["lines"]:
                typer.echo(line)
        noun = "recipe" if len(results) == 1 else "recipes"
        if invalid:
            typer.echo(f"{len(invalid)} of {len(results)} {noun} invalid ({errors} error{'s' if errors != 1 else ''})")
        else:
            typer.echo(f"{len(results)} {noun} valid")
    if invalid:
        raise typer.Exit(2)


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="The recipe file.", show_default=False)],
    set_: SetOption = None,
    data: DataOption = None,
    no_data: Annotated[
        bool, typer.Option("--no-data", help="Do not read data or tokenizer; plan from the recipe alone.")
    ] = False,
    format: FormatOption = Format.text,
) -> None:
    """Compile a recipe into a training plan: resolved values, steps, time, memory and cost.

    By default the data is read (data.dataset, or --data PATH) and tokenized with the base model's
    tokenizer: rows per split, token lengths, the max-length cut-off and what it truncates and
    drops. When the tokenizer cannot be had (offline), token counts are approximated and the plan
    says so. --no-data plans from the recipe alone, in a fraction of a second.

    Example: lora-recipes plan recipes/glue_sst2.yaml --data ../shared/data/sst2 --format json
    """
    import yaml

    from lora_recipes.errors import UserError
    from lora_recipes.planning.plan import build_plan, render_plan_text
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
        typer.echo(json.dumps(result, indent=2, default=str))
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
    except KeyboardInterrupt:
        typer.echo("interrupted; the newest checkpoint is kept (continue with --resume RUN_DIR)", err=True)
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
    again with the same --output asks only for the answers still missing.

    Example: lora-recipes evaluate recipes/glue_sst2.yaml --adapter runs/glue_sst2-20250101-120000 --base
    """
    from lora_recipes.evaluation.evaluate import ProgressLine, evaluate_recipe
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
    if format is Format.json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(render_table(result), nl=False)
        typer.echo(f"\nwrote {output_dir}/eval.json, table.md and predictions-*.jsonl")


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


def run() -> None:
    app()
