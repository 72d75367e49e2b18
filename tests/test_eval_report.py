"""LoRA Land's shipped numbers, the comparison table, and eval.json, on local systems evaluated
with a stand-in model loader (no model needed)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from conftest import SHARED_DATA
from lora_recipes.data.types import EvaluationSet, Example
from lora_recipes.evaluation import evaluate as ev
from lora_recipes.evaluation.reference import TABLE_FILE, reference_scores, reference_table
from lora_recipes.evaluation.table import render_table
from lora_recipes.recipe.loader import load_recipe
from lora_recipes.recipe.schema import load_schema


def test_every_reference_task_of_the_schema_has_published_numbers() -> None:
    enum = load_schema()["properties"]["evaluation"]["properties"]["reference_task"]["enum"]
    assert {t for t in enum if t is not None} == set(reference_table())
    assert len(reference_table()) == 31


def test_the_shipped_table_is_loraland_table_12() -> None:
    sst2 = reference_scores("glue_sst2")
    assert sst2 is not None
    assert (sst2.metric, sst2.mistral7b_ft, sst2.gpt4, sst2.gpt35) == ("accuracy", 0.959, 0.942, 0.933)
    assert sst2.mistral7b_base == pytest.approx(0.959 - 0.844)
    assert reference_scores(None) is None
    mean_ft = sum(r.mistral7b_ft for r in reference_table().values()) / 31
    mean_gpt4 = sum(r.gpt4 for r in reference_table().values()) / 31
    assert round(mean_ft, 3) == 0.732 and round(mean_gpt4, 3) == 0.661  # the paper's headline averages


def test_the_shipped_table_matches_the_shared_copy() -> None:
    shared = SHARED_DATA.parent / "reference" / TABLE_FILE
    if not shared.is_file():
        pytest.skip(f"{shared} is not available")
    shipped = resources.files("lora_recipes.evaluation").joinpath(TABLE_FILE).read_text(encoding="utf-8")
    assert shipped == shared.read_text(encoding="utf-8")


def test_comparability_of_metrics() -> None:
    assert reference_scores("e2e_nlg").comparable_with("rouge_l")  # type: ignore[union-attr]
    assert not reference_scores("e2e_nlg").comparable_with("exact_match")  # type: ignore[union-attr]
    assert reference_scores("glue_stsb").comparable_with("stsb")  # type: ignore[union-attr]
    assert not reference_scores("magicoder").comparable_with("rouge_l")  # type: ignore[union-attr]


def result(metric: str, task: str | None, systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ref = reference_scores(task)
    return {
        "name": "demo",
        "metric": metric,
        "mode": "generate",
        "n": 10,
        "scores": {name: {metric: s.pop("score")} for name, s in systems.items()},
        "systems": systems,
        "data": {"split": "test", "subset_hash": "sha256:0123456789abcdef"},
        "reference": None
        if ref is None
        else {"task": ref.task, "metric": ref.metric, "comparable": ref.comparable_with(metric), "rows": ref.rows()},
    }


def system(score: float, description: str, **extra: Any) -> dict[str, Any]:
    base = {"description": description, "unparseable": 0, "failures": 0, "errors": {}, "examples_per_second": 12.5}
    return {"score": score, **base, **extra}


def test_table_rows_and_notes() -> None:
    table = render_table(
        result(
            "accuracy",
            "glue_sst2",
            {
                "adapter": system(0.9123, "runs/x/adapter"),
                "base": system(0.5, "SmolLM2", unparseable=3),
                "gpt-4o": system(0.8, "chat at https://api/v1/chat/completions", failures=2, errors={"HTTP 500": 2}),
            },
        )
    )
    lines = table.splitlines()
    assert lines[0] == "## demo: accuracy on 10 examples"
    assert "subset hash 0123456789ab" in lines[2]
    assert "| adapter: runs/x/adapter | 0.912 | 0 | 0 | 12.50 |" in lines
    assert "| base: SmolLM2 | 0.500 | 3 | 0 | 12.50 |" in lines
    assert "| LoRA Land: Mistral-7B fine-tuned | 0.959 | | | |" in lines
    assert "| LoRA Land: GPT-3.5 Turbo | 0.933 | | | |" in lines
    assert "- gpt-4o: 2 of 10 requests failed and score 0 (HTTP 500 x2)." in lines
    assert "- base: 3 outputs could not be read as an answer and score 0." in lines


def test_table_says_when_loraland_measured_something_else() -> None:
    table = render_table(result("rouge_l", "magicoder", {"adapter": system(0.4, "a")}))
    assert "LoRA Land scored magicoder with humaneval; this table's rouge_l scores are not comparable" in table
    plain = render_table(result("rouge_l", None, {"adapter": system(0.4, "a")}))
    assert "LoRA Land" not in plain


class FakeModel:
    """Stands in for a loaded model: `answer_local` is replaced, so only identity matters."""


def test_local_systems_eval_json_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nbase_model: ./m\nprompt: {template: '{q}'}\noutput: {column: a}\ndata: {dataset: ./d}\n"
        "evaluation: {reference_task: e2e_nlg}\n"
    )
    loaded = load_recipe(recipe)
    examples = [Example(i, f"question {i}", f"the answer is {i}") for i in range(4)]
    subset = EvaluationSet("test", examples, "sha256:feed", ())
    answers = {"question 0": "the answer is 0", "question 1": "an answer is 1", "question 2": "", "question 3": "no"}
    asked: list[str] = []

    def fake_answer_local(model: Any, tokenizer: Any, recipe: Any, prompts: list[str], on_answers: Any) -> None:
        asked.extend(prompts)
        on_answers(list(range(len(prompts))), [{"completion": answers[p], "prediction": answers[p]} for p in prompts])

    monkeypatch.setattr(ev, "answer_local", fake_answer_local)
    systems = [ev.System("base", "base", "./m")]
    out = tmp_path / "out"
    report = ev.evaluate(loaded, subset, systems, out, model_loader=lambda loaded: (FakeModel(), None))
    # rouge_l (the default for text outputs): 1, 3/4 ("answer is 1" of 4 tokens each), 0, 0
    assert report["metric"] == "rouge_l"
    assert report["scores"]["base"]["rouge_l"] == pytest.approx((1 + 0.75) / 4)
    assert report["n"] == 4 and report["failures"] == {"base": 0}
    assert report["reference"]["comparable"] and report["reference"]["metric"] == "rouge"
    assert report["systems"]["base"]["examples_per_second"] > 0
    assert json.loads((out / "eval.json").read_text()) == report
    assert (out / "table.md").read_text() == render_table(report)
    assert len((out / "predictions-base.jsonl").read_text().splitlines()) == 4
    assert asked == [e.prompt for e in examples]

    # A changed generation setting changes the answers' keys: everything is asked again.
    asked.clear()
    changed = load_recipe(recipe, ["generation.max_new_tokens=7"])
    ev.evaluate(changed, subset, systems, out, model_loader=lambda loaded: (FakeModel(), None))
    assert asked == [e.prompt for e in examples]
    # The same settings again: nothing is asked.
    asked.clear()
    again = ev.evaluate(changed, subset, systems, out, model_loader=lambda loaded: pytest.fail("no model needed"))
    assert asked == [] and again["systems"]["base"]["resumed"] == 4


def test_a_torn_journal_line_is_asked_again(tmp_path: Path) -> None:
    journal = ev.Journal(tmp_path / "answers.jsonl")
    journal.add([("k1", {"prediction": "a"}), ("k2", {"prediction": "b"})])
    with open(tmp_path / "answers.jsonl", "a", encoding="utf-8") as f:
        f.write('{"key": "k3", "predic')  # a crash in the middle of a write
    reread = ev.Journal(tmp_path / "answers.jsonl")
    assert set(reread.records) == {"k1", "k2"}
    reread.add([("k3", {"prediction": "c"})])
    assert ev.Journal(tmp_path / "answers.jsonl").records["k3"]["prediction"] == "c"


def test_gold_answers_the_metric_cannot_score_are_refused_before_anything_runs(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nbase_model: ./m\nprompt: {template: '{q}'}\noutput: {column: a}\ndata: {dataset: ./d}\n"
        "evaluation: {metric: gsm8k}\n"
    )
    subset = EvaluationSet("test", [Example(0, "q", "#### 4"), Example(1, "q", "four")], "h", ())
    with pytest.raises(ev.UserError, match=r"1 of 2 test rows \(row 1: 'four' holds no number\)"):
        ev.evaluate(
            load_recipe(recipe), subset, [ev.System("base", "base", "m")], tmp_path / "o", model_loader=pytest.fail
        )
