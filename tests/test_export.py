"""`lora-recipes export RUN_DIR --merged OUT`: the adapter merged into its unquantized base, one
plain transformers folder that gives the logits of base + adapter; written whole or not at all,
readable by others, never over files it did not write."""

from __future__ import annotations

import json
import os
import random
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_recipes.cli import app

runner = CliRunner()


def write_task(folder: Path, model_dir: Path) -> Path:
    """A sentiment task on the tiny model (the pattern of test_eval_cli.py), 4-bit QLoRA with LoRA
    on attention and the output layer, a few steps."""
    rng = random.Random(0)
    data = folder / "data"
    data.mkdir()
    for split, n in (("train", 32), ("validation", 8), ("test", 8)):
        with open(data / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                label = rng.randint(0, 1)
                word = rng.choice(["great", "lovely"] if label else ["dull", "boring"])
                f.write(json.dumps({"text": f"the movie was {word}", "label": label}) + "\n")
    recipe = folder / "sentiment.yaml"
    recipe.write_text(
        f"""\
version: 1
name: sentiment
base_model: {model_dir}
quantization: {{bits: 4}}
adapter: {{target_modules: [q_proj, v_proj, lm_head]}}
prompt:
  template: "Review: {{text}}\\nSentiment:"
output:
  column: label
  type: category
  labels: [negative, positive]
  label_map: {{"0": negative, "1": positive}}
data: {{dataset: ./data}}
trainer: {{train_steps: 4, eval_steps: 4, batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 0.05, device: cpu}}
""",
        encoding="utf-8",
    )
    return recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A few 4-bit QLoRA steps on the tiny model, with LoRA on attention and the output layer."""
    folder = tmp_path_factory.mktemp("export")
    recipe = write_task(folder, tiny_model_dir)
    run = folder / "run"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def export(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["export", *map(str, args)])
    return result.exit_code, result.output


def logits(model: object, input_ids: object) -> object:
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids).logits  # type: ignore[operator]


@pytest.mark.slow
def test_merged_model_gives_the_logits_of_base_plus_adapter(
    run_dir: Path, tmp_path: Path, tiny_model_dir: Path, umask_022: None
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    code, output = export(run_dir, "--merged", out, "--dtype", "float32")
    assert code == 0, output
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "README.md",
        "lora_recipes_export.json",
    } <= names
    assert "tokenizer.json" in names and not any(n.startswith("adapter") for n in names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "the staging folder is left behind"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"

    # Readable by others: the umask's modes, not mkstemp's 0600 and mkdtemp's 0700.
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("Review: the movie was great\nSentiment: positive").input_ids])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain = logits(base, ids)
    with_adapter = logits(PeftModel.from_pretrained(base, run_dir / "adapter"), ids)
    got = logits(merged, ids)
    diff = (got - with_adapter).abs().max().item()  # type: ignore[operator]
    print(f"merged vs base + adapter (float32): max abs diff {diff:.3g}")
    assert diff < 1e-4
    assert (with_adapter - plain).abs().max().item() > 1e-3  # type: ignore[operator]  # the adapter does something

    card = (out / "README.md").read_text()
    assert f"base_model: {tiny_model_dir.name}" not in card  # a folder name is no hub id: no front-matter link
    assert "| LoRA rank r | 8 |" in card and "not a hub id" in card
    marker = json.loads((out / "lora_recipes_export.json").read_text())
    assert marker["base"]["id"] == tiny_model_dir.name and "location" not in marker["base"]
    assert marker["dtype"] == "float32" and marker["lora"]["r"] == 8 and marker["run"] == "run"
    assert set(marker["files"]) == names - {"lora_recipes_export.json"}


@pytest.mark.slow
def test_default_dtype_is_the_4bit_compute_dtype_and_overwrite_replaces_an_earlier_export(
    run_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    out.mkdir()  # an empty folder is fine
    code, output = export(run_dir / "adapter", "--merged", out)
    assert code == 0, output
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    earlier = json.loads((out / "lora_recipes_export.json").read_text())
    # Pretend the earlier export wrote a file this one does not: --overwrite removes it.
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    (out / "lora_recipes_export.json").write_text(
        json.dumps({**earlier, "files": [*earlier["files"], "model-00002-of-00002.safetensors"]})
    )

    code, output = export(run_dir, "--merged", out)
    assert code == 2 and "not empty" in output and "--overwrite" in output

    code, output = export(run_dir, "--merged", out, "--overwrite", "--dtype", "float32")
    assert code == 0, output
    assert not (out / "model-00002-of-00002.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    marker = json.loads((out / "lora_recipes_export.json").read_text())
    assert "model-00002-of-00002.safetensors" not in marker["files"]


@pytest.mark.slow
def test_the_merged_base_is_named_portably(run_dir: Path, tiny_model_dir: Path) -> None:
    """The run's adapter names its base by a portable id, not by the folder's path."""
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name


def test_files_it_did_not_write_are_never_replaced(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine")
    code, output = export(run, "--merged", out, "--overwrite")
    assert code == 2 and "not an earlier export" in output and str(out) in output
    (out / "lora_recipes_export.json").write_text(json.dumps({"files": ["model.safetensors"]}))
    code, output = export(run, "--merged", out, "--overwrite")
    assert code == 2 and "did not write (config.json)" in output
    assert (out / "config.json").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    code, output = export(run, "--merged", tmp_path / "file")
    assert code == 2 and "is a file" in output


def fake_run(tmp_path: Path) -> Path:
    """A run directory's shape and no model: the destination is checked before anything loads."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (run / "recipe.resolved.yaml").write_text("version: 1\n")
    return run


@pytest.mark.parametrize("make", ["missing", "empty", "random", "bare_adapter", "no_adapter", "full"])
def test_not_a_run_directory_is_a_user_error_naming_it(tmp_path: Path, make: str) -> None:
    path = tmp_path / "thing"
    expected = "not a run directory"
    if make == "missing":
        expected = "no such run directory"
    elif make == "empty":
        path.mkdir()
    elif make == "random":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif make == "bare_adapter":
        path.mkdir()
        (path / "adapter_config.json").write_text("{}")
    elif make == "no_adapter":
        (path / "checkpoints").mkdir(parents=True)
        (path / "recipe.resolved.yaml").write_text("version: 1\n")
        expected = "the run has no adapter yet"
    elif make == "full":
        (path / "model").mkdir(parents=True)
        (path / "model" / "config.json").write_text("{}")
        (path / "recipe.resolved.yaml").write_text("version: 1\n")
        expected = "a full fine-tuning run"
    code, output = export(path, "--merged", tmp_path / "out")
    assert code == 2, output
    assert f"error: {path}: {expected}" in output
    assert not (tmp_path / "out").exists()


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    code, output = export(tmp_path, "--merged", tmp_path / "out", "--dtype", "int4")
    assert code == 2 and "--dtype int4" in output
    code, output = export(tmp_path, "--merged", tmp_path / "out", "--device", "tpu")
    assert code == 2 and "--device tpu" in output
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "--merged" in result.output


def test_the_card_links_a_hub_base_and_says_what_was_merged() -> None:
    from lora_recipes.model.export import ExportInfo, minimal_card
    from lora_recipes.model.source import ModelSource, describe_base

    base = describe_base(ModelSource("hub", "mistralai/Mistral-7B-v0.1", None), commit="a" * 40)
    info = ExportInfo(base, {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]}, "bfloat16", "jigsaw", "jigsaw-1")
    card = minimal_card(info)
    assert card.startswith("---\nbase_model: mistralai/Mistral-7B-v0.1\nlibrary_name: transformers\n")
    assert f"revision `{'a' * 40}`" in card and "- r: 16" in card and "bfloat16" in card and "`jigsaw-1`" in card


@pytest.mark.slow
def test_an_adapter_on_a_tied_output_layer_is_merged_into_an_untied_copy(tmp_path: Path, tiny_model_dir: Path) -> None:
    """SmolLM2 ties its output layer to the input embedding: merging a LoRA on lm_head into the
    shared weight would change the embedding too. The export unties them first."""
    import shutil

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    from lora_recipes.model.export import export_merged
    from lora_recipes.model.source import ModelSource

    base_dir = tmp_path / "tied"
    base_dir.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name.startswith("tokenizer"):
            shutil.copy(item, base_dir / item.name)
    config = MistralConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(1)
    MistralForCausalLM(config).save_pretrained(base_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False, task_type="CAUSAL_LM")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tied = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora)
    assert any("tie_word_embeddings=True" in str(w.message) for w in caught)  # peft sees the case we test
    tied.save_pretrained(str(tmp_path / "adapter"))

    out = tmp_path / "merged"
    export_merged(
        ModelSource("local", str(base_dir), None), tmp_path / "adapter", out, load_options={}, dtype="float32"
    )
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False

    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 129, 200]])
    with warnings.catch_warnings():  # the same warning again: unmerged, the tied weights stay unchanged
        warnings.filterwarnings("ignore", "Model has `tie_word_embeddings=True`", UserWarning)
        unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter")
    reference = logits(unmerged, ids)
    merged = AutoModelForCausalLM.from_pretrained(out)
    diff = (logits(merged, ids) - reference).abs().max().item()  # type: ignore[operator]
    assert diff < 1e-4
    embedding = AutoModelForCausalLM.from_pretrained(base_dir).get_input_embeddings().weight
    assert torch.equal(merged.get_input_embeddings().weight, embedding)  # type: ignore[arg-type]
