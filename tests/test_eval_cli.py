"""End to end on the tiny model: train a few steps with `lora-recipes train`, then `evaluate` the
adapter and the base in one call, resume, rank, and `predict`; and the command's user errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_recipes.cli import app

runner = CliRunner()
POSITIVE = ["great", "wonderful", "charming", "lovely", "brilliant", "moving"]
NEGATIVE = ["dull", "boring", "lifeless", "awful", "tedious", "clumsy"]


def write_task(folder: Path, model_dir: Path) -> Path:
    rng = random.Random(0)
    data = folder / "data"
    data.mkdir()
    for split, n in (("train", 64), ("validation", 8), ("test", 12)):
        with open(data / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                label = rng.randint(0, 1)
                word = rng.choice(POSITIVE if label else NEGATIVE)
                f.write(json.dumps({"text": f"the movie was {word}", "label": label}) + "\n")
    recipe = folder / "sentiment.yaml"
    recipe.write_text(
        f"""\
version: 1
name: sentiment
base_model: {model_dir}
quantization: {{bits: null}}
# LoRA on the output layer too: the tiny random model learns the answer format in a few steps.
adapter: {{target_modules: [q_proj, v_proj, lm_head]}}
prompt:
  template: "Review: {{text}}\\nSentiment:"
output:
  column: label
  type: category
  labels: [negative, positive]
  label_map: {{"0": negative, "1": positive}}
data: {{dataset: ./data}}
trainer: {{train_steps: 30, batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 0.05, device: cpu}}
generation: {{max_new_tokens: 4}}
evaluation: {{metric: accuracy, reference_task: glue_sst2, batch_size: 5}}
""",
        encoding="utf-8",
    )
    return recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("eval-e2e")
    recipe = write_task(folder, tiny_model_dir)
    run_dir = folder / "run"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    return recipe, run_dir


@pytest.mark.slow
def test_evaluate_adapter_and_base_in_one_table(trained: tuple[Path, Path]) -> None:
    recipe, run_dir = trained
    result = runner.invoke(app, ["evaluate", str(recipe), "--adapter", str(run_dir), "--base", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 12 and report["metric"] == "accuracy"
    assert report["failures"] == {"base": 0, "adapter": 0}
    assert set(report["scores"]) == {"base", "adapter"}
    # The random base never answers with a label; the trained adapter always does.
    assert report["unparseable"] == {"base": 12, "adapter": 0}
    assert report["scores"]["base"]["accuracy"] == 0.0
    assert report["scores"]["adapter"]["accuracy"] > 0.0
    assert report["data"]["split"] == "test" and report["data"]["subset_hash"].startswith("sha256:")

    (out,) = run_dir.glob("eval-*")  # the default folder is inside the run directory
    saved = json.loads((out / "eval.json").read_text())
    assert saved["scores"] == report["scores"]
    rows = [json.loads(line) for line in (out / "predictions-adapter.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["prediction"] for r in rows} <= {"negative", "positive"}
    assert sum(r["score"] for r in rows) / 12 == pytest.approx(report["scores"]["adapter"]["accuracy"])
    table = (out / "table.md").read_text()
    for line in ("| base: ", "| adapter: ", "| LoRA Land: Mistral-7B fine-tuned | 0.959", "| LoRA Land: GPT-4 | 0.942"):
        assert line in table
    assert f"| {report['scores']['adapter']['accuracy']:.3f} |" in table
    base_row = next(line for line in table.splitlines() if line.startswith("| base: "))
    assert "/" not in base_row.split("|")[1]  # a short label, not a local path

    # The score went into the adapter's model card, where the hub reads it.
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(run_dir / "adapter" / "README.md"))
    (scored,) = card.data.eval_results
    assert (scored.metric_type, scored.dataset_split) == ("accuracy", "test")
    assert scored.metric_value == pytest.approx(report["scores"]["adapter"]["accuracy"], abs=1e-4)

    # Same --output again: everything is resumed, no model is even loaded.
    again = runner.invoke(
        app, ["evaluate", str(recipe), "--adapter", str(run_dir), "--base", "--output", str(out), "--format", "json"]
    )
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)
    assert second["scores"] == report["scores"]
    assert all(s["resumed"] == 12 and s["load_seconds"] == 0 for s in second["systems"].values())


@pytest.mark.slow
def test_rank_mode_and_limit(trained: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, run_dir = trained
    args = ["evaluate", str(recipe), "--adapter", str(run_dir / "adapter"), "--base", "--limit", "5"]
    result = runner.invoke(
        app, [*args, "--set", "evaluation.mode=rank", "--output", str(tmp_path / "r"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 5 and report["mode"] == "rank"
    assert report["unparseable"] == {"base": 0, "adapter": 0}  # a ranked label is always a label
    rows = [json.loads(line) for line in (tmp_path / "r" / "predictions-base.jsonl").read_text().splitlines()]
    assert all(len(r["log_likelihoods"]) == 2 for r in rows)
    assert all(
        r["prediction"] == ["negative", "positive"][r["log_likelihoods"].index(max(r["log_likelihoods"]))] for r in rows
    )
    text = runner.invoke(app, [*args, "--output", str(tmp_path / "t")])
    assert text.exit_code == 0, text.output
    assert "## sentiment: accuracy on 5 examples" in text.stdout


@pytest.mark.slow
def test_predict_file_and_stdin(trained: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, run_dir = trained
    rows = [{"text": "the movie was great", "id": 1}, {"text": "the movie was dull", "id": 2}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    target = tmp_path / "out" / "predictions.jsonl"
    result = runner.invoke(
        app, ["predict", str(recipe), "--adapter", str(run_dir), "--input", str(source), "--output", str(target)]
    )
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in target.read_text().splitlines()]
    assert [{k: v for k, v in w.items() if k != "prediction"} for w in written] == rows
    assert all(w["prediction"] in ("negative", "positive") for w in written)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary file left

    piped = runner.invoke(app, ["predict", str(recipe), "--adapter", str(run_dir)], input=source.read_text())
    assert piped.exit_code == 0, piped.output
    assert [json.loads(line) for line in piped.stdout.splitlines()] == written


@pytest.mark.slow
def test_predict_names_the_bad_input_line(trained: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, run_dir = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"review": "no text column"}\n')
    result = runner.invoke(app, ["predict", str(recipe), "--adapter", str(run_dir), "--input", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:2:" in result.stderr and "'text'" in result.stderr
    bad.write_text('{"text": "fine"}\nnot json\n')
    result = runner.invoke(app, ["predict", str(recipe), "--adapter", str(run_dir), "--input", str(bad)])
    assert result.exit_code == 2 and f"{bad}:2: not valid JSON" in result.stderr


@pytest.mark.slow
def test_user_errors_exit_2_with_one_message(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_task(tmp_path, tiny_model_dir)
    cases = [
        ([], "nothing to evaluate"),
        (["--adapter", str(tmp_path / "missing")], "no such folder"),
        (["--adapter", str(tmp_path / "data")], "neither a PEFT adapter folder"),
        (["--endpoint", "http://127.0.0.1:9/v1"], "give one --model NAME per --endpoint"),
        (
            ["--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "SURELY_UNSET_VAR_1234"],
            "SURELY_UNSET_VAR_1234",
        ),
        (["--base", "--set", "evaluation.metric=gsm8k"], "cannot score the gold answers"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["evaluate", str(recipe), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output, (args, result.stderr)


@pytest.mark.slow
def test_adapter_base_and_endpoints_make_one_table(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from test_eval_endpoints import ScriptedServer

    recipe, run_dir = trained
    rows = [json.loads(line) for line in (recipe.parent / "data" / "test.jsonl").read_text().splitlines()][:6]
    # An endpoint that knows every answer (chat) and one that always answers "positive" and fails once.
    answers = {f"Review: {r['text']}\nSentiment:": ["negative", "positive"][r["label"]] for r in rows}
    with ScriptedServer({}, answers) as oracle, ScriptedServer({next(iter(answers)): ["500", "ok"]}, {}) as flaky:
        args = (
            f"evaluate {recipe} --adapter {run_dir} --base --limit 6 --format json "
            f"--endpoint {oracle.url}/chat/completions --model oracle --endpoint {flaky.url} --model always-positive "
            f"--set evaluation.endpoints.backoff=0.01 --output {tmp_path / 'all'}"
        )
        result = runner.invoke(app, args.split())
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["scores"]) == ["base", "adapter", "oracle", "always-positive"]
    assert report["scores"]["oracle"]["accuracy"] == 1.0
    positives = sum(r["label"] for r in rows) / 6
    assert report["scores"]["always-positive"]["accuracy"] == pytest.approx(positives)
    assert report["systems"]["always-positive"]["retries"] == 1 and report["failures"]["always-positive"] == 0
    assert (
        report["systems"]["oracle"]["protocol"] == "chat"
        and report["systems"]["always-positive"]["protocol"] == "completions"
    )
    table = (tmp_path / "all" / "table.md").read_text()
    assert [line.split(":")[0] for line in table.splitlines() if line.startswith("| ") and ": " in line][:4] == [
        "| base",
        "| adapter",
        "| oracle",
        "| always-positive",
    ]


@pytest.mark.slow
def test_an_adapter_of_another_base_model_is_a_user_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from lora_recipes.model.tiny import make_tiny_model

    recipe, run_dir = trained
    other = make_tiny_model(tmp_path / "wider", hidden_size=96)
    args = ["evaluate", str(recipe), "--adapter", str(run_dir), "--limit", "2", "--output", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--set", f"base_model={other}"])
    assert result.exit_code == 2, result.output
    assert "does not fit the base model" in result.stderr and "recipe.resolved.yaml" in result.stderr
