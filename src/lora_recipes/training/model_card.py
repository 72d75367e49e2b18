"""The model card (README.md) of a trained adapter, a full fine-tune or a merged export, in the
Hugging Face model-card format that peft and the transformers Trainer write: YAML metadata the hub
reads (`base_model`, `library_name`, `pipeline_tag`, `tags`, `datasets`, `license`, and
`model-index` once `evaluate` has scored it), then what a reader needs to know and to run it.

Everything comes from the run directory (recipe.resolved.yaml, manifest.json, plan.json, the cost
report and the adapter's adapter_config.json), so a card can be rendered again at any time:
`write_run_card` writes `adapter/README.md` at the end of `train`, `export_card` renders the card
of a merged export (pass it to `model.export.export_merged(card=...)`), and `add_evaluation` puts
an evaluation's scores into the card of the adapter it scored (front matter and body).

`base_model` is the base's portable hub id (what adapter_config.json says, see
`model.source.portable_base_id`); when the base has none (a local folder that names no hub
model) the key is left out rather than filled with a path. `datasets` lists the recipe's dataset
when it is a hub id. Nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lora_recipes.atomic import write_text_atomic
from lora_recipes.model.source import looks_like_hub_id
from lora_recipes.recipe.serving import VLLM_DEFAULT_MAX_LORA_RANK, vllm_rank_flag
from lora_recipes.training.run_dir import RunLayout

if TYPE_CHECKING:
    from lora_recipes.model.export import ExportInfo
    from lora_recipes.recipe.types import Recipe

CARD_FILE = "README.md"
EVALUATION_START = "<!-- lora-recipes:evaluation -->"
EVALUATION_END = "<!-- /lora-recipes:evaluation -->"
_FRONT = re.compile(r"\A---[ \t]*\n(.*?\n)?---[ \t]*(?:\n|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CardFacts:
    """What a card says, read from a run directory (`run_facts`)."""

    name: str
    recipe: Mapping[str, Any]  # the resolved recipe
    base_id: str | None  # the base's hub id; None when it has none
    base_label: str  # what to call the base in text: the hub id, else a short name (never a path)
    base_note: str | None = None  # e.g. trained on weights de-quantized from a GGUF file
    base_revision: str | None = None
    adapter_config: Mapping[str, Any] = field(default_factory=dict)
    full: bool = False  # a full fine-tune (model/), not an adapter
    run: str | None = None  # the run directory's name
    data_hashes: Mapping[str, str] = field(default_factory=dict)
    split_rows: Mapping[str, int] = field(default_factory=dict)
    max_length: int | None = None
    cost: Mapping[str, Any] | None = None  # the cost report
    libraries: Mapping[str, Any] = field(default_factory=dict)
    git: Mapping[str, Any] | None = None
    compute_dtype: str | None = None  # what 4-bit weights were de-quantized to in training (manifest.json)


# -- reading and writing a card ----------------------------------------------------------------------


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """A card's metadata (the YAML front matter; {} when it has none or it does not parse) and body."""
    match = _FRONT.match(text)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1) or "") or {}
    except yaml.YAMLError:
        return {}, text
    return (meta if isinstance(meta, dict) else {}), text[match.end() :].lstrip("\n")


def join_card(meta: Mapping[str, Any], body: str) -> str:
    front = yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n\n{body.rstrip()}\n"


def read_card(folder: Path) -> tuple[dict[str, Any], str] | None:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    return split_card(path.read_text(encoding="utf-8"))


# -- the facts -----------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def short_model_name(value: str) -> str:
    """A base model's name fit for a table or a sentence: a hub id as it is, a `package:` or local
    GGUF file as its model name (SmolLM2-135M-Instruct), a local folder as its name; never a path."""
    from lora_recipes.model.source import PACKAGE_PREFIX, gguf_stem

    if looks_like_hub_id(value):
        return value
    last = value[len(PACKAGE_PREFIX) :] if value.startswith(PACKAGE_PREFIX) else value
    last = last.rstrip("/").rsplit("/", 1)[-1] or last
    return gguf_stem(last) if last.endswith(".gguf") else last


def base_label(recipe: Recipe) -> str:
    """The base model as a table shows it: its short name and quantization (SmolLM2-135M-Instruct,
    4-bit)."""
    name = short_model_name(recipe.base_model)
    bits = recipe.quantization.bits
    return f"{name}, {bits}-bit" if bits else name


def _base_identity(recipe_file: Path) -> tuple[str | None, str | None, str | None]:
    """(hub id or None, note, revision) of the base model of a run's recipe, by
    `model.source.describe_base` (GGUF metadata, a local config.json); all None when it cannot be
    told."""
    from lora_recipes.errors import LoraRecipesError

    try:
        from lora_recipes.model.source import describe_base, load_options, recipe_model_source
        from lora_recipes.recipe.loader import load_recipe

        loaded = load_recipe(recipe_file)
        options = load_options(loaded)
        identity = describe_base(
            recipe_model_source(loaded), revision=options["revision"], hub_id=options.get("hub_id")
        )
    except (LoraRecipesError, OSError, ValueError):
        return None, None, None
    return (identity.id if looks_like_hub_id(identity.id) else None), identity.note, identity.id_revision


def run_facts(run_dir: Path, *, cost: Mapping[str, Any] | None = None) -> CardFacts:
    """The facts of the run in `run_dir` (`cost`: the cost report, when it is not written yet)."""
    layout = RunLayout(Path(run_dir))
    resolved = yaml.safe_load(layout.resolved_recipe.read_text(encoding="utf-8"))
    recipe = resolved if isinstance(resolved, dict) else {}
    full = recipe.get("adapter", {}).get("type") == "none"
    adapter_config = _read_json(layout.adapter / "adapter_config.json") if not full else None
    manifest = _read_json(layout.manifest) or {}
    plan = _read_json(layout.plan) or {}
    cost = cost if cost is not None else _read_json(layout.cost_report_json)

    base_id, note, revision = _base_identity(layout.resolved_recipe)
    configured = (adapter_config or {}).get("base_model_name_or_path")
    if isinstance(configured, str) and looks_like_hub_id(configured):
        base_id = configured
        revision = (adapter_config or {}).get("revision") or revision
    base_model = str(recipe.get("base_model", ""))
    splits = plan.get("splits") or {}
    rows = {k: v.get("examples", v.get("rows")) for k, v in splits.items() if isinstance(v, dict)}
    if not rows:
        expected = recipe.get("data", {}).get("expected_rows") or {}
        rows = {k: v for k, v in expected.items() if isinstance(v, int)}
    return CardFacts(
        name=str(recipe.get("name") or layout.root.name),
        recipe=recipe,
        base_id=base_id,
        base_label=base_id or short_model_name(base_model),
        base_note=note,
        base_revision=revision,
        adapter_config=adapter_config or {},
        full=full,
        run=layout.root.name,
        data_hashes=manifest.get("data_hashes") or plan.get("split_hashes") or {},
        split_rows={k: v for k, v in rows.items() if isinstance(v, int)},
        max_length=plan.get("max_length"),
        cost=cost if isinstance(cost, dict) else None,
        libraries=manifest.get("libraries") or {},
        git=manifest.get("git"),
        compute_dtype=(manifest.get("precision") or {}).get("compute"),
    )


# -- the metadata --------------------------------------------------------------------------------------


def dataset_id(recipe: Mapping[str, Any]) -> str | None:
    """The recipe's dataset when it is a hub id (a local file or folder is not)."""
    dataset = str(recipe.get("data", {}).get("dataset") or "")
    if looks_like_hub_id(dataset) and not Path(dataset).exists():
        return dataset
    return None


def card_metadata(facts: CardFacts, *, merged: bool = False) -> dict[str, Any]:
    """The YAML front matter (see the module notes)."""
    recipe = facts.recipe
    meta: dict[str, Any] = {}
    if facts.base_id:
        meta["base_model"] = facts.base_id
    if merged:
        meta["base_model_relation"] = "merge"
    meta["library_name"] = "transformers" if merged or facts.full else "peft"
    meta["pipeline_tag"] = "text-generation"
    bits = recipe.get("quantization", {}).get("bits")
    tags = ["lora"] if not facts.full else ["full-fine-tuning"]
    if bits == 4 and not facts.full:
        tags.append("qlora")
    if merged:
        tags.append("merged")
    if facts.base_id and not facts.full and not merged:
        tags.append(f"base_model:adapter:{facts.base_id}")
    tags += [_tag(facts.name), "lora-recipes"]
    meta["tags"] = list(dict.fromkeys(tags))
    dataset = dataset_id(recipe)
    if dataset:
        meta["datasets"] = [dataset]
    if recipe.get("license"):
        meta["license"] = recipe["license"]
    return meta


def _tag(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "task"


# -- the body --------------------------------------------------------------------------------------------


def _fence(text: str, lang: str = "") -> list[str]:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return [f"{ticks}{lang}", text, ticks]


def _settings(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    return [f"| {k} | {_value(v)} |" for k, v in pairs if v is not None]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v) if v else "[]"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def _example_prompt(recipe: Mapping[str, Any]) -> str:
    template = str(recipe.get("prompt", {}).get("template", ""))
    return template.replace("{{", "\0").replace("}}", "\1").replace("\0", "{").replace("\1", "}")


def _summary(facts: CardFacts, merged: ExportInfo | None) -> list[str]:
    recipe = facts.recipe
    bits = recipe.get("quantization", {}).get("bits")
    if merged is not None:
        what = (
            f"A LoRA adapter merged into its base model `{facts.base_label}` and saved in {merged.dtype}: an "
            "ordinary transformers model."
        )
    elif facts.full:
        what = f"`{facts.base_label}` fine-tuned in every weight."
    else:
        quantized = f" on the {bits}-bit quantized base (QLoRA)" if bits else ""
        what = f"A LoRA adapter for `{facts.base_label}`, trained{quantized}."
    lines = [
        f"# {facts.name}",
        "",
        f"{what} Trained with lora-recipes from the recipe `{facts.name}`"
        + (f" (run `{facts.run}`)." if facts.run else "."),
    ]
    description = str(recipe.get("description") or "").strip()
    if description:
        lines += ["", description]
    if facts.base_note:
        lines += ["", f"Base model: {facts.base_note}."]
    elif not facts.base_id:
        lines += [
            "",
            f"Base model: `{facts.base_label}` is not a hub id; load the adapter onto the same weights it was trained "
            "on (set model_parameters.hub_id in the recipe when they came from a hub model).",
        ]
    return lines


def _prompt_section(recipe: Mapping[str, Any]) -> list[str]:
    prompt, output, generation = recipe.get("prompt", {}), recipe.get("output", {}), recipe.get("generation", {})
    lines = [
        "## Prompt",
        "",
        "The model sees this template with each `{column}` filled from a data row, then writes the answer "
        f"(the `{output.get('column')}` column):",
        "",
        *_fence(str(prompt.get("template", "")), "text"),
        "",
        "| setting | value |",
        "|---|---|",
        *_settings(
            [
                ("answer", f"{output.get('type', 'text')} from column `{output.get('column')}`"),
                ("labels", output.get("labels") or None),
                ("target prefix", json.dumps(output.get("target_prefix")) if output.get("target_prefix") else None),
                ("chat template", prompt.get("chat_template")),
                ("system message", prompt.get("system")),
                (
                    "few-shot examples",
                    len(prompt.get("examples") or []) or prompt.get("retrieval", {}).get("k") or None,
                ),
                ("max new tokens", generation.get("max_new_tokens")),
                ("stop", [json.dumps(s) for s in generation.get("stop") or []] or None),
            ]
        ),
    ]
    return lines


def _training_section(facts: CardFacts) -> list[str]:
    recipe = facts.recipe
    a, q, t = recipe.get("adapter", {}), recipe.get("quantization", {}), recipe.get("trainer", {})
    cost = facts.cost or {}
    schedule = t.get("learning_rate_scheduler", {})
    quant = None
    if q.get("bits") == 4:
        quant = f"4-bit {q.get('bnb_4bit_quant_type')}" + (
            ", double quantization" if q.get("bnb_4bit_use_double_quant") else ""
        )
        asked = q.get("bnb_4bit_compute_dtype")
        quant += f", {asked} compute"
        if facts.compute_dtype not in (None, asked):  # a CPU without bfloat16, a GPU before Ampere
            quant += f" ({facts.compute_dtype} on the device it was trained on)"
    elif q.get("bits") == 8:
        quant = "8-bit"
    pairs: list[tuple[str, Any]] = []
    if not facts.full:  # as the saved adapter says, else as the recipe does
        c = facts.adapter_config
        targets = c.get("target_modules")
        pairs += [
            ("LoRA rank r", c.get("r", a.get("r"))),
            ("LoRA alpha", c.get("lora_alpha", a.get("alpha"))),
            ("LoRA dropout", c.get("lora_dropout", a.get("dropout"))),
            ("target modules", sorted(targets) if isinstance(targets, list) else targets or a.get("target_modules")),
            ("bias", c.get("bias", a.get("bias"))),
        ]
    pairs += [
        ("base weights", quant or f"{recipe.get('model_parameters', {}).get('dtype', 'auto')} (not quantized)"),
        ("optimizer", f"{t.get('optimizer', {}).get('type')}, learning rate {_value(t.get('learning_rate'))}"),
        ("schedule", f"{schedule.get('decay')} decay, {_value(schedule.get('warmup_fraction'))} warmup"),
        (
            "batch",
            f"{t.get('batch_size')} rows x {t.get('gradient_accumulation_steps')} accumulation steps"
            + (f" x {cost['processes']} processes" if cost.get("processes", 1) > 1 else ""),
        ),
        ("max length", f"{facts.max_length:,} tokens" if isinstance(facts.max_length, int) else None),
        ("optimizer steps", cost.get("steps")),
        ("adapter of step", cost.get("adapter_step")),
        (
            "best validation loss",
            f"{cost['best_validation_loss']:.4f}" if isinstance(cost.get("best_validation_loss"), float) else None,
        ),
        ("stopped early", cost.get("stopped_early") or None),
        ("validation", f"every {_steps(t.get('eval_steps'))}" + _validation_rows(t)),
        ("seed", recipe.get("seed")),
    ]
    return ["## Training", "", "| setting | value |", "|---|---|", *_settings(pairs)]


def _steps(n: Any) -> str:
    return "step" if n == 1 else f"{n} steps"


def _validation_rows(trainer: Mapping[str, Any]) -> str:
    bound = trainer.get("validation_max_rows")
    return f", on at most {bound:,} rows" if isinstance(bound, int) else ""


def _data_section(facts: CardFacts) -> list[str]:
    data = facts.recipe.get("data", {})
    dataset = dataset_id(facts.recipe)
    source = (
        f"[{dataset}](https://huggingface.co/datasets/{dataset})"
        if dataset
        else f"`{short_model_name(str(data.get('dataset', '')))}` (local)"
    )
    extra = [
        f"config `{data['config']}`" if data.get("config") else "",
        f"revision `{data['revision']}`" if data.get("revision") else "",
    ]
    lines = ["## Data", "", f"Source: {source}" + "".join(f", {e}" for e in extra if e) + ".", ""]
    names = sorted(set(facts.split_rows) | set(facts.data_hashes), key=("train", "validation", "test").index)
    if names:
        lines += ["| split | rows | content hash |", "|---|---:|---|"]
        for name in names:
            rows = facts.split_rows.get(name)
            lines.append(
                f"| {name} | {f'{rows:,}' if rows is not None else '-'} | `{facts.data_hashes.get(name, '-')}` |"
            )
    return lines


def _cost_section(cost: Mapping[str, Any] | None) -> list[str]:
    if not cost:
        return []
    where = f"{cost.get('device_name') or cost.get('device')}" + (
        f" x {cost['processes']}" if cost.get("processes", 1) > 1 else ""
    )
    wall = float(cost.get("wall_seconds") or 0)
    lines = [
        "## Cost",
        "",
        "| | |",
        "|---|---|",
        f"| device | {where} |",
        f"| wall time | {wall / 60:,.1f} minutes ({cost.get('gpu_hours', 0):.4f} device-hours) |",
        f"| cost | ${cost.get('total_cost_usd', 0):,.2f} at ${cost.get('price_per_hour_usd', 0):,.2f}/hour "
        f"({cost.get('price_note', '')}) |",
        f"| tokens trained | {cost.get('tokens_trained', 0):,} |",
        f"| peak memory | {(cost.get('peak_memory_bytes') or 0) / 2**30:.2f} GiB |",
    ]
    return lines


def _usage_section(facts: CardFacts, merged: ExportInfo | None) -> list[str]:
    recipe = facts.recipe
    base = facts.base_id or "BASE_MODEL"
    gen = recipe.get("generation", {})
    max_new = gen.get("max_new_tokens", 256)
    prompt = json.dumps(_example_prompt(recipe))
    name = _tag(facts.name)
    if merged is not None or facts.full:
        return [
            "## How to use",
            "",
            *_fence(
                "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n'
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
                f'inputs = tokenizer({prompt}, return_tensors="pt")\n'
                f"print(tokenizer.decode(model.generate(**inputs, max_new_tokens={max_new})[0]))",
                "python",
            ),
            "",
            "vLLM: `vllm serve path/to/this/folder`; LoRAX: `lorax-launcher --model-id path/to/this/folder`.",
        ]
    q = recipe.get("quantization", {})
    r = int(facts.adapter_config.get("r") or recipe.get("adapter", {}).get("r") or VLLM_DEFAULT_MAX_LORA_RANK)
    peft_lines = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer"]
    load_args = '"path/to/adapter"'
    if q.get("bits") == 4:
        peft_lines = [
            "import torch",
            *peft_lines[:1],
            "from transformers import AutoTokenizer, BitsAndBytesConfig",
        ]
        peft_lines += [
            "",
            "# the 4-bit base the adapter was trained on (leave out quantization_config for 16-bit weights)",
            "quantization = BitsAndBytesConfig(",
            f'    load_in_4bit=True, bnb_4bit_quant_type="{q.get("bnb_4bit_quant_type", "nf4")}",',
            f"    bnb_4bit_use_double_quant={bool(q.get('bnb_4bit_use_double_quant'))}, "
            f"bnb_4bit_compute_dtype=torch.{q.get('bnb_4bit_compute_dtype', 'bfloat16')},",
            ")",
        ]
        load_args += ", quantization_config=quantization"
    peft_lines += [
        "",
        f"model = AutoPeftModelForCausalLM.from_pretrained({load_args})  # loads {base} too",
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        f'inputs = tokenizer({prompt}, return_tensors="pt").to(model.device)',
        f"output = model.generate(**inputs, max_new_tokens={max_new}, do_sample=False)",
        "print(tokenizer.decode(output[0][inputs.input_ids.shape[1]:], skip_special_tokens=True))",
    ]
    # above vLLM's largest rank (512) the serving checks already said it cannot serve the adapter
    flag = vllm_rank_flag(r) if r > VLLM_DEFAULT_MAX_LORA_RANK else None
    rank_flag = f" --max-lora-rank {flag}" if flag is not None else ""
    vllm = (
        f"vllm serve {base} --enable-lora{rank_flag} --lora-modules {name}=path/to/adapter\n"
        "curl http://localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(json.dumps({'model': name, 'prompt': _example_prompt(recipe), 'max_tokens': max_new, 'temperature': 0}))}"
    )
    lorax_request = {
        "inputs": _example_prompt(recipe),
        "parameters": {"adapter_id": "/data/adapter", "adapter_source": "local", "max_new_tokens": max_new},
    }
    lorax = (
        f"docker run --gpus all -p 8080:80 -v $PWD/path/to/adapter:/data/adapter ghcr.io/predibase/lorax:main "
        f"--model-id {base}\n"
        "curl http://localhost:8080/generate -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(json.dumps(lorax_request))}"
    )
    chat = recipe.get("prompt", {}).get("chat_template") or "none"
    wrapped = (
        f" The prompt was trained wrapped in a chat template (`prompt.chat_template: {chat}`): pass the filled "
        "template as the user turn through the tokenizer's `apply_chat_template` (with the system message above, "
        "if any) instead of as raw text."
        if chat != "none"
        else ""
    )
    return [
        "## How to use",
        "",
        "Fill the prompt template above with your row; greedy decoding, as evaluated." + wrapped,
        "",
        "With peft:",
        "",
        *_fence("\n".join(peft_lines), "python"),
        "",
        "With vLLM (OpenAI-compatible server, many adapters on one base):",
        "",
        *_fence(vllm, "sh"),
        "",
        "With LoRAX:",
        "",
        *_fence(lorax, "sh"),
    ]


def _versions_section(facts: CardFacts) -> list[str]:
    libs = facts.libraries
    names = ("lora-recipes", "peft", "transformers", "torch", "bitsandbytes", "accelerate")
    found = [f"- {n} {libs[n]}" for n in names if libs.get(n)]
    git = facts.git or {}
    if git.get("commit"):
        found.append(
            f"- recipe at git commit {git['commit'][:12]}" + (" (with local changes)" if git.get("dirty") else "")
        )
    return ["## Framework versions", "", *found] if found else []


def render_card(facts: CardFacts, *, merged: ExportInfo | None = None, evaluation: str = "") -> str:
    """The whole card: metadata, then summary, prompt, training, data, cost, evaluation (the
    marked section `add_evaluation` maintains, kept as given), usage and versions."""
    meta = card_metadata(facts, merged=merged is not None)
    sections = [
        _summary(facts, merged),
        _prompt_section(facts.recipe),
        _training_section(facts),
        _data_section(facts),
        _cost_section(facts.cost),
        [evaluation.strip()] if evaluation.strip() else [],
        _usage_section(facts, merged),
        _versions_section(facts),
    ]
    body = "\n\n".join("\n".join(s) for s in sections if s)
    return join_card(meta, body)


# -- the writers -----------------------------------------------------------------------------------------


def _evaluation_block(body: str) -> str:
    start, end = body.find(EVALUATION_START), body.find(EVALUATION_END)
    if start < 0 or end < start:
        return ""
    return body[start : end + len(EVALUATION_END)]


def write_run_card(run_dir: Path, *, cost: Mapping[str, Any] | None = None) -> Path | None:
    """Write the card of a run's adapter/ (or model/): README.md, replacing the one peft writes and
    keeping the evaluations `add_evaluation` put in an earlier card. Returns its path (None when
    the run has no result folder yet)."""
    facts = run_facts(run_dir, cost=cost)
    folder = RunLayout(Path(run_dir)).result(full=facts.full)
    if not folder.is_dir():
        return None
    earlier = read_card(folder)
    meta_before, body_before = earlier if earlier is not None else ({}, "")
    text = render_card(facts, evaluation=_evaluation_block(body_before))
    if meta_before.get("model-index"):  # scores added by evaluate stay
        meta, body = split_card(text)
        meta["model-index"] = meta_before["model-index"]
        text = join_card(meta, body)
    path = folder / CARD_FILE
    write_text_atomic(path, text)
    return path


def export_card(run_dir: Path, info: ExportInfo) -> str:
    """The card of a merged export of the run in `run_dir` (`model.export.export_merged`'s `card`
    argument: `card=lambda info: export_card(run_dir, info)`). The adapter's evaluations are
    listed in the text, not in the metadata: they scored the adapter on its quantized base."""
    facts = run_facts(run_dir)
    if info.base.id and looks_like_hub_id(info.base.id):
        facts = dataclasses.replace(facts, base_id=info.base.id, base_label=info.base.id, base_note=info.base.note)
    adapter_card = read_card(RunLayout(Path(run_dir)).adapter)
    evaluation = _evaluation_block(adapter_card[1]) if adapter_card else ""
    if evaluation:
        evaluation = evaluation.replace(
            "## Evaluation", "## Evaluation (of the adapter on its base, before merging)", 1
        )
    return render_card(facts, merged=info, evaluation=evaluation)


# -- evaluation results ------------------------------------------------------------------------------------


def _result_key(result: Mapping[str, Any]) -> tuple[Any, ...]:
    dataset, metrics = result.get("dataset") or {}, result.get("metrics") or [{}]
    metric = metrics[0] if metrics else {}
    return (
        dataset.get("type"),
        dataset.get("config"),
        dataset.get("split"),
        metric.get("type"),
        (metric.get("args") or {}).get("mode"),
    )


def model_index_result(recipe: Recipe, result: Mapping[str, Any], score: float) -> dict[str, Any]:
    """One `model-index` result: the adapter's score on the evaluation split."""
    data = recipe.data
    dataset = dataset_id({"data": {"dataset": data.dataset}})
    name = result.get("name") or "evaluation"
    metric = str(result["metric"])
    entry_dataset: dict[str, Any] = {
        "name": dataset or str(name),
        "type": dataset or str(name),
        "split": result["data"]["split"],
    }
    if data.config:
        entry_dataset["config"] = data.config
    if data.revision:
        entry_dataset["revision"] = data.revision
    return {
        "task": {"type": "text-generation", "name": "Text Generation"},
        "dataset": entry_dataset,
        "metrics": [
            {
                "type": metric,
                "value": round(float(score), 4),
                "name": metric,
                "args": {
                    "examples": result["n"],
                    "mode": result.get("mode"),
                    "subset_hash": result["data"].get("subset_hash"),
                },
                "verified": False,
            }
        ],
    }


def _evaluation_text(results: Sequence[Mapping[str, Any]], latest: Mapping[str, Any] | None) -> str:
    lines = [EVALUATION_START, "## Evaluation", ""]
    if results:
        lines += ["| data | split | metric | score | examples | mode |", "|---|---|---|---:|---:|---|"]
        for r in results:
            d, m = r["dataset"], r["metrics"][0]
            args = m.get("args") or {}
            lines.append(
                f"| {d.get('name')}{' ' + d['config'] if d.get('config') else ''} | {d.get('split')} | {m['type']} | "
                f"{m['value']:.3f} | {args.get('examples', '-')} | {args.get('mode', '-')} |"
            )
    if latest:
        metric = latest["metric"]
        lines += [
            "",
            f"Latest `lora-recipes evaluate` ({latest.get('started', '')}), {metric} on {latest['n']} examples:",
            "",
        ]
        lines += ["| system | score |", "|---|---:|"]
        for system_name, system in latest.get("systems", {}).items():
            value = latest["scores"].get(system_name, {}).get(metric)
            shown = "-" if value is None else f"{value:.3f}"
            label = "this adapter" if system.get("kind") == "adapter" else f"{system_name}: {system.get('description')}"
            lines.append(f"| {label} | {shown} |")
        reference = latest.get("reference")
        if reference and reference.get("comparable"):
            for label, value in reference.get("rows", []):
                lines.append(f"| {label} (LoRA Land, published) | {'-' if value is None else f'{value:.3f}'} |")
    lines.append(EVALUATION_END)
    return "\n".join(lines)


def add_evaluation(adapter_dir: Path, result: Mapping[str, Any], recipe: Recipe, *, system: str = "adapter") -> bool:
    """Put an evaluation's score of `system` (eval.json's content, `result`) into the card of the
    adapter it scored: a `model-index` result in the metadata (one per dataset, split, metric and
    mode: a later evaluation replaces an earlier one of the same kind) and the Evaluation section
    of the text. False when the folder has no card (nothing is invented for an adapter from
    elsewhere) or the system has no score."""
    card = read_card(adapter_dir)
    score = result.get("scores", {}).get(system, {}).get(result.get("metric"))
    if card is None or score is None:
        return False
    meta, body = card
    entry = model_index_result(recipe, result, score)
    index = meta.get("model-index")
    if not isinstance(index, list) or not index or not isinstance(index[0], dict):
        index = [{"name": result.get("name") or "adapter", "results": []}]
    results = [r for r in index[0].get("results") or [] if isinstance(r, dict) and _result_key(r) != _result_key(entry)]
    results.append(entry)
    index[0]["results"] = results
    meta["model-index"] = index
    section = _evaluation_text(results, result)
    old = _evaluation_block(body)
    if old:
        body = body.replace(old, section)
    else:
        marker = "\n## How to use"
        at = body.find(marker)
        body = body[:at] + "\n" + section + "\n" + body[at:] if at >= 0 else body.rstrip() + "\n\n" + section
    try:
        write_text_atomic(Path(adapter_dir) / CARD_FILE, join_card(meta, body))
    except OSError:  # a read-only adapter folder: eval.json has the scores all the same
        return False
    return True
