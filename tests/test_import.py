"""`lora-recipes import ludwig|axolotl`: real-shaped configs become recipes that train with the same
effective hyperparameters; what has no equivalent is a warning with its line and a comment in the
recipe; configs that cannot become a recipe get one error with their line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_recipes.errors import RecipeInvalid, UserError
from lora_recipes.importers import import_config
from lora_recipes.planning.plan import build_plan
from lora_recipes.recipe.loader import LoadedRecipe, load_recipe
from lora_recipes.recipe.schema import fill_defaults

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "import"
GLUE_SST2 = ROOT / "recipes" / "glue_sst2.yaml"
# The data facts of SST-2 (not training settings: a Ludwig config has none of them), as
# recipes/glue_sst2.yaml states them, for plan --no-data.
SST2_DATA = (
    "data.config=sst2",
    "data.evaluation_split=validation",
    "data.expected_rows={train: 67349, validation: 872, test: 1821}",
    "data.expected_tokens=134",
)


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def effective(loaded: LoadedRecipe) -> dict[str, Any]:
    """The resolved recipe key by key, with what only restates another value resolved
    (eval_batch_size null is batch_size)."""
    values = flat(loaded.resolved)
    if values["trainer.eval_batch_size"] is None:
        values["trainer.eval_batch_size"] = values["trainer.batch_size"]
    return values


def imported(tmp_path: Path, tool: str, name: str, *sets: str, **options: Any) -> tuple[LoadedRecipe, Any]:
    out = tmp_path / (Path(name).stem + ".recipe.yaml")
    result = import_config(tool, FIXTURES / name, output=out, **options)
    return load_recipe(out, sets), result


def warnings_of(result: Any) -> list[tuple[int, str]]:
    return [(n.location.line, n.path) for n in result.notices if n.severity == "warning"]


# --- LoRA Land's configuration ------------------------------------------------------------------


def test_loraland_config_trains_what_glue_sst2_trains(tmp_path: Path) -> None:
    recipe, result = imported(tmp_path, "ludwig", "loraland_sst2.yaml", *SST2_DATA, dataset="nyu-mll/glue")
    assert warnings_of(result) == []  # every setting of LoRA Land's config has an equivalent
    ours, theirs = effective(recipe), effective(load_recipe(GLUE_SST2))
    differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    assert differ == {
        # What the recipe library says beyond the training settings: name, words, scoring.
        "name",
        "description",
        "evaluation.metric",
        "evaluation.reference_task",
        # How the data is laid out: a Ludwig config gets it from its data (a split column holding
        # label texts), the library recipe from the hub dataset (its own splits, coded labels).
        "data.split.type",
        "output.label_map",
        "output.label_map.0",
        "output.label_map.1",
        # LoRA Land wrote its measured 95th percentile down; the library recipe measures it.
        "preprocessing.global_max_sequence_length",
        # Ludwig writes a resumable checkpoint whenever it validates; the library checkpoints
        # every 1,000 steps. Neither changes what is trained.
        "trainer.steps_per_checkpoint",
    }
    assert ours["preprocessing.global_max_sequence_length"] == 134 == theirs["data.expected_tokens"]
    for key in (
        "base_model",
        "quantization.bits",
        "quantization.bnb_4bit_compute_dtype",
        "adapter.r",
        "adapter.target_modules",
        "trainer.learning_rate",
        "trainer.gradient_accumulation_steps",
        "trainer.learning_rate_scheduler.decay",
        "trainer.eval_steps",
        "generation.max_new_tokens",
        "generation.temperature",
        "prompt.template",
    ):
        assert ours[key] == theirs[key], key


def test_loraland_plan_without_data_equals_glue_sst2s(tmp_path: Path) -> None:
    recipe, _ = imported(tmp_path, "ludwig", "loraland_sst2.yaml", *SST2_DATA, dataset="nyu-mll/glue")
    ours, theirs = build_plan(recipe).to_json(), build_plan(load_recipe(GLUE_SST2)).to_json()
    for plan in (ours, theirs):
        plan.pop("name")
        plan.pop("recipe")  # compared key by key above
    assert ours == theirs
    assert ours["steps"]["total"] == 12630 and ours["lora_trainable_params"] == 3407872


def test_loraland_recipe_keeps_the_configs_comments(tmp_path: Path) -> None:
    _, result = imported(tmp_path, "ludwig", "loraland_sst2.yaml")
    text = result.text
    assert "  bits: 4  # QLoRA: NF4 weights\n" in text
    assert "  bnb_4bit_compute_dtype: bfloat16  # Ludwig's default is float16\n" in text
    assert "  column: label  # the data holds the label text: negative or positive\n" in text
    assert "  # The same prompt for the base model and the adapter.\n  template: |-\n" in text
    assert "  eval_steps: 100  # Ludwig validates at every checkpoint\n" in text
    assert "#  LoRA Land's fine-tuning configuration (Predibase, 2024)" in text  # the file's header
    assert "dataset: CHANGE-ME" in text
    assert any("names no dataset" in n.message for n in result.notices)


# --- Ludwig's own defaults -------------------------------------------------------------------------


def test_ludwig_defaults_are_written_out(tmp_path: Path) -> None:
    recipe, result = imported(tmp_path, "ludwig", "ludwig_llama2_4bit.yaml")
    values = effective(recipe)
    expected = {
        "base_model": "meta-llama/Llama-2-7b-hf",
        "quantization.bits": 4,
        "quantization.bnb_4bit_compute_dtype": "float16",  # Ludwig's default, not the recipe's
        "adapter.type": "lora",
        "trainer.learning_rate": 0.0003,
        "trainer.batch_size": 2,
        "trainer.eval_batch_size": 2,  # Ludwig's fine-tuning default
        "trainer.gradient_accumulation_steps": 8,
        "trainer.epochs": 3,
        "trainer.optimizer.type": "adam",  # Ludwig's default
        "trainer.learning_rate_scheduler.decay": "none",  # Ludwig's default: no decay
        "trainer.learning_rate_scheduler.warmup_fraction": 0.01,
        "trainer.gradient_clipping.clipglobalnorm": 0.5,
        "data.split.validation_fraction": 0.1,  # Ludwig's random 70/10/20 split
        "data.split.test_fraction": 0.2,
        "preprocessing.global_max_sequence_length": "p100",  # Ludwig cuts no training row
        "generation.max_new_tokens": 256,  # Ludwig: the output's max_sequence_length
        "generation.temperature": 0.1,  # Ludwig samples at 0.1 by default
        "output.type": "text",
        "output.column": "output",
    }
    assert {k: values[k] for k in expected} == expected
    assert warnings_of(result) == [
        (32, "output_features[0].preprocessing.max_sequence_length"),
        (42, "trainer.learning_rate_scheduler.reduce_on_plateau"),
        (45, "preprocessing.sample_ratio"),
    ]
    # Each is kept as a comment under the section it belongs with, with the source's own comment.
    assert "  #   trainer.learning_rate_scheduler.reduce_on_plateau: 2  # halve the rate when the loss stalls\n" in (
        result.text
    )
    assert "  #     line 45: Ludwig's preprocessing.sample_ratio has no equivalent in a recipe" in result.text
    notes = " ".join(n.message for n in result.notices if n.severity == "note")
    assert "once per epoch" in notes and "50 likeliest tokens" in notes


def test_full_fine_tuning_and_no_quantization_are_ludwigs_defaults(tmp_path: Path) -> None:
    config = tmp_path / "full.yaml"
    config.write_text(
        "model_type: llm\nbase_model: opt-350m\ninput_features: [{name: q, type: text}]\n"
        "output_features: [{name: a, type: text}]\ntrainer: {type: finetune, learning_rate: 0.00001}\n",
        encoding="utf-8",
    )
    result = import_config("ludwig", config, dataset="./data")
    values = effective(result.loaded)
    assert values["base_model"] == "facebook/opt-350m"  # Ludwig's short name
    assert values["adapter.type"] == "none" and values["quantization.bits"] is None
    assert values["prompt.template"] == "{q}"  # no template: the input is the prompt
    assert values["trainer.epochs"] == 100 and values["trainer.learning_rate"] == 0.00001


def test_ludwig_templates_become_recipe_templates(tmp_path: Path) -> None:
    config = tmp_path / "templated.yaml"
    config.write_text(
        "model_type: llm\nbase_model: mistral-7b\n"
        "input_features: [{name: review, type: text}]\noutput_features: [{name: label, type: text}]\n"
        'prompt:\n  task: "Say yes or no."\n'
        '  template: "{__task__} JSON like {{\\"a\\": 1}}. Score {score:.2f}. Text: {__sample__}\\nAnswer:"\n'
        "trainer: {type: finetune}\n",
        encoding="utf-8",
    )
    result = import_config("ludwig", config, dataset="./data")
    prompt = result.loaded.resolved["prompt"]["template"]
    assert prompt == 'Say yes or no. JSON like {{"a": 1}}. Score {score_2f}. Text: {review}\nAnswer:'
    assert result.loaded.resolved["data"]["columns"]["score_2f"]["op"] == "round"
    assert result.loaded.resolved["data"]["columns"]["score_2f"]["digits"] == 2
    assert any("JSON-escaped" in n.message for n in result.notices)


# --- Axolotl ----------------------------------------------------------------------------------------


def test_axolotl_mistral_qlora(tmp_path: Path) -> None:
    recipe, result = imported(tmp_path, "axolotl", "axolotl_mistral_qlora.yml")
    values = effective(recipe)
    expected = {
        "base_model": "mistralai/Mistral-7B-v0.1",
        "quantization.bits": 4,
        "quantization.bnb_4bit_quant_type": "nf4",
        "quantization.bnb_4bit_use_double_quant": True,
        "quantization.bnb_4bit_compute_dtype": "bfloat16",
        "model_parameters.dtype": "auto",
        "adapter.r": 32,
        "adapter.alpha": 16,
        "adapter.dropout": 0.05,
        "adapter.target_modules": ["all-linear"],
        "preprocessing.global_max_sequence_length": 8192,
        "trainer.batch_size": 2,
        "trainer.gradient_accumulation_steps": 4,
        "trainer.epochs": 1,
        "trainer.learning_rate": 0.0002,
        "trainer.learning_rate_scheduler.decay": "cosine",
        "trainer.learning_rate_scheduler.warmup_fraction": 0.1,
        "trainer.optimizer.type": "paged_adamw_8bit",
        "trainer.optimizer.weight_decay": 0.0,
        "trainer.gradient_clipping.clipglobalnorm": 1.0,  # transformers' default max_grad_norm
        "trainer.early_stop": -1,  # Axolotl stops early only when told
        "trainer.group_by_length": False,
        "trainer.enable_gradient_checkpointing": True,
        "data.dataset": "mhenrichsen/alpaca_2k_test",
        "data.split.validation_fraction": 0.1,
        "data.splits.validation": None,  # carved from train, as Axolotl does
        "data.split.test_fraction": 0.0,
        "data.evaluation_split": "validation",
        "output.column": "output",
        "output.target_prefix": "",
        "output_directory": "./outputs/qlora-out",
    }
    assert {k: values[k] for k in expected} == expected
    assert values["prompt.template"].endswith(
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )
    assert warnings_of(result) == [
        (3, "model_type"),
        (4, "tokenizer_type"),
        (13, "datasets[0].type"),
        (14, "dataset_prepared_path"),
        (16, "output_dir"),
        (21, "sequence_len"),
        (22, "sample_packing"),
        (28, "lora_target_modules"),
        (46, "optimizer"),
        (55, "logging_steps"),
        (56, "attn_implementation"),
        (58, "loss_watchdog_threshold"),
        (59, "loss_watchdog_patience"),
        (62, "evals_per_epoch"),
        (63, "saves_per_epoch"),
    ]
    assert (
        "#   # optionally might have model_type or tokenizer_type\n#   model_type: MistralForCausalLM\n" in result.text
    )


def test_axolotl_llama3_qlora_with_its_own_prompt_format(tmp_path: Path) -> None:
    recipe, result = imported(tmp_path, "axolotl", "axolotl_llama3_qlora.yml")
    values = effective(recipe)
    expected = {
        "seed": 7,
        "model_parameters.dtype": "bfloat16",
        "adapter.r": 16,
        "adapter.alpha": 32,
        "adapter.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "prompt.template": "[INST] Answer the customer's ticket. {ticket} [/INST]",
        "output.column": "reply",
        "data.dataset": "./data/support_tickets.jsonl",
        "trainer.train_steps": 600,
        "trainer.learning_rate_scheduler.warmup_fraction": 0.05,  # 30 warmup steps of 600
        "trainer.optimizer.type": "adamw",
        "trainer.gradient_clipping.clipglobalnorm": 0.3,
        "trainer.eval_steps": 50,
        "trainer.steps_per_checkpoint": 200,
        "trainer.early_stop": 3,
        "data.split.validation_fraction": 0.05,
    }
    assert {k: values[k] for k in expected} == expected
    assert warnings_of(result) == [
        (3, "model_type"),
        (4, "tokenizer_type"),
        (11, "datasets[0].ds_type"),
        (19, "output_dir"),
        (24, "sequence_len"),
        (26, "pad_to_sequence_len"),
        (36, "optimizer"),
        (45, "logging_steps"),
        (46, "flash_attention"),
        (55, "special_tokens.pad_token"),
    ]


# --- --minimal, output files, errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "name"),
    [
        ("ludwig", "loraland_sst2.yaml"),
        ("ludwig", "ludwig_llama2_4bit.yaml"),
        ("axolotl", "axolotl_mistral_qlora.yml"),
        ("axolotl", "axolotl_llama3_qlora.yml"),
    ],
)
def test_minimal_leaves_out_defaults_and_resolves_the_same(tmp_path: Path, tool: str, name: str) -> None:
    full = import_config(tool, FIXTURES / name, output=tmp_path / "full.yaml")
    minimal = import_config(tool, FIXTURES / name, output=tmp_path / "minimal.yaml", minimal=True)
    resolved = dict(full.loaded.resolved)
    assert minimal.loaded.resolved == resolved
    assert len(minimal.text.splitlines()) < len(full.text.splitlines())
    written = flat(load_recipe(tmp_path / "minimal.yaml").resolved)
    defaults = flat(fill_defaults({"prompt": {}, "output": {}, "data": {}}))
    kept = flat(__import__("yaml").safe_load(minimal.text))
    # Nothing written in the minimal recipe equals the schema's default for it.
    assert not [k for k, v in kept.items() if k in defaults and defaults[k] == v and type(v) is type(defaults[k])]
    assert written == flat(resolved)


def test_output_is_written_atomically_and_never_over_a_file_without_force(tmp_path: Path) -> None:
    out = tmp_path / "recipe.yaml"
    out.write_text("mine\n", encoding="utf-8")
    with pytest.raises(UserError, match="exists; give --force"):
        import_config("ludwig", FIXTURES / "loraland_sst2.yaml", output=out)
    assert out.read_text(encoding="utf-8") == "mine\n"
    import_config("ludwig", FIXTURES / "loraland_sst2.yaml", output=out, force=True)
    assert out.read_text(encoding="utf-8").startswith("# Imported from")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # no temporary file left


def _config(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


LUDWIG_HEAD = "model_type: llm\nbase_model: mistral-7b\ninput_features: [{name: q, type: text}]\n"


@pytest.mark.parametrize(
    ("tool", "text", "line", "message"),
    [
        ("ludwig", "model_type: ecd\ninput_features: []\n", 1, "model_type ecd is not an LLM config"),
        ("ludwig", "base_model: x\ninput_features: []\n", 1, "no model_type"),
        ("ludwig", LUDWIG_HEAD, 1, "no output feature"),
        (
            "ludwig",
            LUDWIG_HEAD + "output_features:\n  - {name: a, type: text}\n  - {name: b, type: text}\n",
            6,
            "2 output features: a recipe trains one answer column",
        ),
        (
            "ludwig",
            LUDWIG_HEAD + "output_features: [{name: a, type: text}]\nadapter:\n  type: prompt_tuning\n",
            6,
            "adapter type prompt_tuning has no equivalent",
        ),
        (
            "ludwig",
            LUDWIG_HEAD + "output_features: [{name: a, type: text}]\nadapter: {type: lora, r: 0}\n",
            5,
            "must be >= 1, got 0",
        ),
        (
            "axolotl",
            "base_model: x\nlearning_rate: 0.0002\ndatasets:\n  - path: d\n    type: chat_template\n",
            5,
            "type chat_template holds whole conversations",
        ),
        (
            "axolotl",
            "base_model: x\nlearning_rate: 0.0002\ndatasets:\n  - path: d\n    type: completion\n",
            5,
            "type completion trains on raw text with no prompt",
        ),
        (
            "axolotl",
            "base_model: x\nlearning_rate: 0.0002\ndatasets:\n  - path: d\n    type: alpaca\n  - path: e\n    type: alpaca\n",
            6,
            "2 datasets: a recipe reads one data source",
        ),
        (
            "axolotl",
            "base_model: x\nlearning_rate: 0.0002\ndatasets:\n  - path: d\n    type: stepwise_supervised\n",
            5,
            "dataset type stepwise_supervised has no mapping",
        ),
    ],
)
def test_configs_that_cannot_become_a_recipe_get_one_error_with_its_line(
    tmp_path: Path, tool: str, text: str, line: int, message: str
) -> None:
    with pytest.raises(RecipeInvalid) as caught:
        import_config(tool, _config(tmp_path, text), output=tmp_path / "out.yaml")
    assert len(caught.value.issues) == 1
    issue = caught.value.issues[0]
    assert issue.location.line == line and message in issue.message, str(issue)
    assert not (tmp_path / "out.yaml").exists()


def test_the_command_line(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lora_recipes", "import", *args], capture_output=True, text=True, check=False
        )

    printed = run("axolotl", str(FIXTURES / "axolotl_mistral_qlora.yml"))
    assert printed.returncode == 0 and printed.stdout.startswith("# Imported from")
    assert "axolotl_mistral_qlora.yml:22:1: warning: sample_packing:" in printed.stderr
    out = tmp_path / "sst2.yaml"
    written = run("ludwig", str(FIXTURES / "loraland_sst2.yaml"), "-o", str(out), "--minimal", "--dataset", "d")
    assert written.returncode == 0 and f"wrote {out}" in written.stderr and written.stdout == ""
    again = run("ludwig", str(FIXTURES / "loraland_sst2.yaml"), "-o", str(out))
    assert again.returncode == 2 and "give --force" in again.stderr
    bad = _config(tmp_path, "model_type: gbm\n", "gbm.yaml")
    failed = run("ludwig", str(bad))
    assert failed.returncode == 2 and f"{bad}:1:1: model_type: model_type gbm is not an LLM config" in failed.stderr
