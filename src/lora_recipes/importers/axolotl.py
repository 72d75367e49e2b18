"""`lora-recipes import axolotl`: an Axolotl LoRA/QLoRA config as a recipe.

Axolotl's defaults that differ from the recipe's are written out (`AXOLOTL` below, from
axolotl/utils/schemas and the transformers Trainer it drives): no early stopping, gradient
clipping at norm 1.0, no LoRA dropout, no validation split, one epoch, a 512-token sequence
length, batches in data order, and float32 unless bf16 or fp16 is set.

    base_model, trust_remote_code          base_model, model_parameters
    adapter, load_in_4bit / load_in_8bit   adapter.type, quantization.bits (qlora: 4-bit NF4)
    lora_r, lora_alpha, lora_dropout       adapter.r, alpha, dropout
    lora_target_modules / _linear          adapter.target_modules ([all-linear])
    sequence_len                           preprocessing.global_max_sequence_length
    micro_batch_size, gradient_accumulation_steps, num_epochs / max_steps, learning_rate,
    lr_scheduler, warmup_ratio / warmup_steps, optimizer, weight_decay, adam_*, max_grad_norm,
    eval_steps, early_stopping_patience, save_steps, gradient_checkpointing, group_by_length
                                           trainer
    val_set_size                           data.split.validation_fraction (carved from train)
    seed, output_dir                       seed, output_directory
    datasets (one): alpaca, input_output, a `type:` mapping with field_* and format keys
                                           data.dataset and prompt.template (+ data.columns)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_recipes.importers.common import Conversion, as_bool, import_error, read_source, schema_default
from lora_recipes.recipe.yamlio import KeyPath

# Axolotl's defaults where a recipe's may differ.
AXOLOTL: dict[KeyPath, Any] = {
    ("adapter", "dropout"): 0.0,
    ("preprocessing", "global_max_sequence_length"): 512,
    ("trainer", "epochs"): 1,
    ("trainer", "batch_size"): 1,
    ("trainer", "gradient_accumulation_steps"): 1,
    ("trainer", "early_stop"): -1,  # no early stopping unless early_stopping_patience
    ("trainer", "group_by_length"): False,
    ("trainer", "gradient_clipping", "clipglobalnorm"): 1.0,  # transformers' max_grad_norm
    ("trainer", "learning_rate_scheduler", "decay"): "cosine",
    ("trainer", "learning_rate_scheduler", "warmup_fraction"): 0.03,  # 3%, at most 100 steps
    ("trainer", "optimizer", "type"): "adamw",  # adamw_torch_fused
    ("trainer", "optimizer", "weight_decay"): 0.0,
    ("data", "split", "validation_fraction"): 0.0,  # val_set_size 0: no validation
}

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "none", "constant_with_warmup": "none"}
OPTIMIZERS = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw",
    "adamw_hf": "adamw",
    "adamw_apex_fused": "adamw",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}
NEAR_OPTIMIZERS = {"adamw_bnb_8bit": "paged_adamw_8bit", "adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "adamw"}

ALPACA_SYSTEM = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
# Axolotl's user-defined prompt format (prompt_strategies/user_defined.py).
USER_DEFINED = {
    "system_prompt": "",
    "field_system": "system",
    "field_instruction": "instruction",
    "field_input": "input",
    "field_output": "output",
    "format": "{instruction} {input} ",
    "no_input_format": "{instruction} ",
    "system_format": "{system}",
}
CHAT_TYPES = ("chat_template", "sharegpt", "messages", "chatml", "conversation")

SECTIONS = {
    "datasets": "data",
    "val_set_size": "data",
    "test_datasets": "data",
    "dataset_prepared_path": "data",
    "chat_template": "prompt",
    "default_system_message": "prompt",
    "train_on_inputs": "prompt",
    "sample_packing": "trainer",
    "eval_sample_packing": "trainer",
    "pad_to_sequence_len": "trainer",
    "saves_per_epoch": "trainer",
    "evals_per_epoch": "trainer",
    "logging_steps": "trainer",
    "lora_model_dir": "adapter",
    "lora_modules_to_save": "adapter",
    "lora_fan_in_fan_out": "adapter",
    "peft_use_dora": "adapter",
    "peft_use_rslora": "adapter",
    "model_type": "base_model",
    "tokenizer_type": "base_model",
    "special_tokens": "base_model",
    "tokens": "base_model",
}


# What to do instead, for the settings without an equivalent that configs often hold.
HINTS = {
    "sample_packing": "a recipe pads each batch to its longest row and groups rows of similar length",
    "evals_per_epoch": "set trainer.eval_steps to the steps per epoch (plan shows them) divided by this",
    "saves_per_epoch": "set trainer.steps_per_checkpoint to the steps per epoch (plan shows them) divided by this",
    "model_type": "the model class is read from the base model's config",
    "tokenizer_type": "the tokenizer is the base model's own",
    "special_tokens": "a recipe uses the tokenizer's special tokens as they are",
    "chat_template": "prompt.chat_template: tokenizer (or a .jinja file) wraps prompts in a chat template",
    "deepspeed": "data parallel with accelerate launch; no ZeRO sharding",
    "fsdp": "data parallel with accelerate launch; no FSDP sharding",
    "wandb_project": "trainer.report_to: [wandb]",
    "lora_model_dir": "a recipe trains a new adapter; train --resume continues a run",
    "resume_from_checkpoint": "train --resume RUN_DIR",
    "train_on_inputs": "the loss covers the answer only in a recipe",
}


def convert(path: Path, dataset: str | None = None) -> Conversion:
    source = read_source(path)
    conv = Conversion(source, "Axolotl")
    conv.put(("version",), 1)
    base = conv.take(("base_model",))
    if not isinstance(base, str) or not base:
        raise import_error(source, ("base_model",), "no base_model", "name the model to fine-tune")
    conv.put(("base_model",), base, ("base_model",))
    if as_bool(conv.peek(("trust_remote_code",))):
        conv.put(("model_parameters", "trust_remote_code"), True, ("trust_remote_code",))
    conv.take(("trust_remote_code",))
    if conv.has(("revision_of_model",)):
        conv.put(("model_parameters", "revision"), str(conv.take(("revision_of_model",))), ("revision_of_model",))
    _adapter(conv)
    _precision(conv)
    _data(conv, dataset)
    _trainer(conv)
    if conv.has(("seed",)) and conv.peek(("seed",)) is not None:
        conv.put(("seed",), conv.take(("seed",)), ("seed",))
    if conv.peek(("output_dir",)):
        conv.put(("output_directory",), str(conv.take(("output_dir",))), ("output_dir",))
        conv.caution(("output_dir",), "a recipe's output_directory holds one run directory per run (name-time)")
    # Axolotl's flags are off unless set: a false or empty value says nothing.
    for key, value in list(source.data.items()):
        if value is False or value == "" or value == [] or value == {}:
            conv.take((key,))
    conv.leftovers(SECTIONS, hints=HINTS)
    return conv


# --- model ---------------------------------------------------------------------------------------


def _adapter(conv: Conversion) -> None:
    kind = conv.take(("adapter",))
    four = as_bool(conv.take(("load_in_4bit",))) is True
    eight = as_bool(conv.take(("load_in_8bit",))) is True
    q: KeyPath = ("quantization",)
    if kind in (None, ""):
        if four or eight:
            raise import_error(
                conv.source,
                ("load_in_4bit",) if four else ("load_in_8bit",),
                "a quantized model without an adapter cannot be trained",
                "set adapter: qlora (or lora)",
            )
        conv.put(("adapter", "type"), "none")
        conv.put((*q, "bits"), None)
        conv.note("no adapter: Axolotl fine-tunes every weight, and so does the recipe (adapter.type: none)")
        return
    if kind not in ("lora", "qlora"):
        raise import_error(
            conv.source,
            ("adapter",),
            f"adapter {kind} has no equivalent",
            "a recipe trains a LoRA adapter (lora or qlora)",
        )
    conv.put(("adapter", "type"), "lora", ("adapter",))
    if kind == "qlora":
        if not four:
            conv.caution(("adapter",), "qlora without load_in_4bit: true; the recipe loads the base model in 4 bits")
        conv.put((*q, "bits"), 4, ("load_in_4bit",) if conv.has(("load_in_4bit",)) else ("adapter",))
    else:
        bits = 8 if eight else (4 if four else None)
        where = ("load_in_8bit",) if eight else ("load_in_4bit",) if four else ("adapter",)
        conv.put((*q, "bits"), bits, where)
    kwargs = conv.peek(("bnb_config_kwargs",))
    if isinstance(kwargs, dict):
        for key in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "llm_int8_threshold"):
            if key in kwargs:
                conv.put((*q, key), conv.take(("bnb_config_kwargs", key)), ("bnb_config_kwargs", key))
    a: KeyPath = ("adapter",)
    for key, target in (("lora_r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout")):
        value = conv.take((key,))
        if value is not None:
            conv.put((*a, target), value, (key,))
        elif (*a, target) in AXOLOTL:
            _default(conv, (*a, target))
    if conv.get((*a, "alpha")) is None:
        conv.note(
            "no lora_alpha: Axolotl passes none to PEFT; the recipe keeps adapter.alpha "
            + str(schema_default((*a, "alpha")))
        )
    modules = conv.take(("lora_target_modules",))
    if as_bool(conv.take(("lora_target_linear",))):
        conv.put((*a, "target_modules"), ["all-linear"], ("lora_target_linear",))
        if modules:
            conv.caution(("lora_target_modules",), "lora_target_linear: true adapts every linear layer, these included")
    elif modules:
        conv.put(
            (*a, "target_modules"), [modules] if isinstance(modules, str) else list(modules), ("lora_target_modules",)
        )


def _precision(conv: Conversion) -> None:
    """bf16 / fp16: the dtype of the weights that are not quantized, and of 4-bit compute."""
    bf16, fp16 = conv.take(("bf16",)), conv.take(("fp16",))
    where = ("bf16",) if conv.has(("bf16",)) else ("fp16",)
    if bf16 == "auto":
        dtype, compute = "auto", "bfloat16"
    elif as_bool(bf16):
        dtype = compute = "bfloat16"
    elif as_bool(fp16):
        dtype, compute, where = "float16", "float16", ("fp16",)
    else:
        dtype = compute = "float32"  # Axolotl's default without bf16 or fp16
    conv.put(("model_parameters", "dtype"), dtype, where if conv.has(where) else None)
    if conv.get(("quantization", "bits")) == 4 and conv.get(("quantization", "bnb_4bit_compute_dtype")) is None:
        conv.put(("quantization", "bnb_4bit_compute_dtype"), compute)


def _default(conv: Conversion, path: KeyPath) -> None:
    """Write Axolotl's default at `path` unless the recipe's own default is the same."""
    if conv.get(path) is None and AXOLOTL[path] != schema_default(path):
        conv.put(path, AXOLOTL[path])


# --- data and prompt ---------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _fill(text: str, fields: dict[str, str]) -> str:
    """An Axolotl format string ({instruction}, {input}, {system}) as a recipe template: each
    field becomes its column's placeholder (or the text given), other braces stay literal."""
    out, i = [], 0
    while i < len(text):
        for name, replacement in fields.items():
            token = "{" + name + "}"
            if text.startswith(token, i):
                out.append(replacement)
                i += len(token)
                break
        else:
            out.append(_escape(text[i]))
            i += 1
    return "".join(out)


def _data(conv: Conversion, dataset: str | None) -> None:
    datasets = conv.peek(("datasets",))
    if not isinstance(datasets, list) or not datasets:
        raise import_error(conv.source, ("datasets",), "no datasets", "give one dataset under datasets:")
    if len(datasets) > 1:
        raise import_error(
            conv.source,
            ("datasets", 1),
            f"{len(datasets)} datasets: a recipe reads one data source",
            "merge them into one dataset, or import one config per dataset",
        )
    d: KeyPath = ("datasets", 0)
    if not isinstance(datasets[0], dict):
        raise import_error(conv.source, d, "a dataset entry must be a mapping (path:, type:)")
    path = conv.take((*d, "path"))
    files = conv.take((*d, "data_files"))
    if dataset is not None:
        conv.put(("data", "dataset"), dataset)
    elif isinstance(files, str):
        conv.put(("data", "dataset"), files, (*d, "data_files"))
        conv.take((*d, "ds_type"))
    elif isinstance(path, str) and path:
        conv.put(("data", "dataset"), path, (*d, "path"))
    else:
        raise import_error(conv.source, d, "the dataset has no path", "give its hub id or local file as path:")
    if isinstance(files, list):
        conv.warn(
            (*d, "data_files"),
            "several data files have no equivalent: put them in one folder as train files",
            section="data",
        )
    for key, target in (("name", "config"), ("revision", "revision")):
        if conv.peek((*d, key)) is not None:
            conv.put(("data", target), str(conv.take((*d, key))), (*d, key))
    if conv.peek((*d, "split")) is not None:
        conv.put(("data", "splits", "train"), str(conv.take((*d, "split"))), (*d, "split"))
    _dataset_type(conv, d)
    if as_bool(conv.peek(("train_on_inputs",))):
        conv.warn(("train_on_inputs",), "the loss covers the answer only in a recipe: no equivalent", section="prompt")
    _validation(conv)


def _dataset_type(conv: Conversion, d: KeyPath) -> None:
    kind = conv.peek((*d, "type"))
    if isinstance(kind, dict):
        _user_defined(conv, (*d, "type"))
        return
    conv.take((*d, "type"))
    if kind is None:
        raise import_error(conv.source, d, "the dataset has no type", "give type: alpaca, input_output or a mapping")
    base = str(kind).split(":", 1)[0].split(".", 1)[0]
    if str(kind) == "alpaca":
        conv.put(
            ("prompt", "template"),
            _escape(ALPACA_SYSTEM + "\n\n") + _fill(ALPACA_TURN, {"instruction": "{instruction}", "input": "{input}"}),
            (*d, "type"),
        )
        conv.put(("output", "column"), "output", (*d, "type"))
        conv.put(("output", "target_prefix"), "")
        conv.caution(
            (*d, "type"),
            "Axolotl leaves out the ### Input section (and shortens the system line) for rows without an input; "
            "the recipe's template always has them",
        )
    elif str(kind) == "input_output":
        conv.put(("data", "columns", "prompt_segment"), {"from": "segments.0.text"}, (*d, "type"))
        conv.put(("data", "columns", "answer_segment"), {"from": "segments.1.text"}, (*d, "type"))
        conv.put(("prompt", "template"), "{prompt_segment}", (*d, "type"))
        conv.put(("output", "column"), "answer_segment", (*d, "type"))
        conv.put(("output", "target_prefix"), "")
        conv.caution(
            (*d, "type"),
            "each row must have two segments, the prompt (label false) then the answer (label true); "
            "Axolotl also takes other shapes",
        )
    elif base == "completion":
        raise import_error(
            conv.source,
            (*d, "type"),
            "type completion trains on raw text with no prompt, which a recipe cannot say (it trains an answer "
            "after a prompt)",
            "split each text into a prompt and an answer column and use a type: mapping with field_instruction "
            "and field_output",
        )
    elif base in CHAT_TYPES:
        raise import_error(
            conv.source,
            (*d, "type"),
            f"type {kind} holds whole conversations, which a recipe cannot say (one prompt, one answer per row)",
            "flatten each conversation to a prompt column and an answer column",
        )
    else:
        raise import_error(
            conv.source,
            (*d, "type"),
            f"dataset type {kind} has no mapping",
            "types with a mapping: alpaca, input_output, or a type: mapping with field_* and format keys",
        )


def _user_defined(conv: Conversion, t: KeyPath) -> None:
    spec = {key: conv.take((*t, key), default) for key, default in USER_DEFINED.items()}
    columns = {"instruction": "{" + str(spec["field_instruction"]) + "}", "input": "{" + str(spec["field_input"]) + "}"}
    system = ""
    if conv.has((*t, "field_system")):
        system = _fill(str(spec["system_format"]), {"system": "{" + str(spec["field_system"]) + "}"})
    elif spec["system_prompt"]:
        system = _fill(str(spec["system_format"]), {"system": _escape(str(spec["system_prompt"]))})
    turn = _fill(str(spec["format"]), columns)
    conv.put(("prompt", "template"), system + turn, (*t, "format") if conv.has((*t, "format")) else t)
    conv.put(
        ("output", "column"), str(spec["field_output"]), (*t, "field_output") if conv.has((*t, "field_output")) else t
    )
    conv.put(("output", "target_prefix"), "")
    if "{input}" in str(spec["format"]):
        conv.caution(
            (*t, "no_input_format") if conv.has((*t, "no_input_format")) else t,
            "Axolotl writes rows without an input with no_input_format; the recipe's template is format for every row",
        )


def _validation(conv: Conversion) -> None:
    size = conv.take(("val_set_size",))
    split: KeyPath = ("data", "split")
    if isinstance(size, int | float) and not isinstance(size, bool) and size > 0:
        if size >= 1 or size > 0.5:
            conv.warn(
                ("val_set_size",),
                f"{size} has no equivalent: a recipe carves at most half of train, as a share",
                section="data",
            )
            return
        conv.put((*split, "validation_fraction"), float(size), ("val_set_size",))
        conv.put(("data", "splits", "validation"), None, ("val_set_size",))  # carved from train, as Axolotl does
        conv.put(("data", "splits", "test"), None)
        conv.put((*split, "test_fraction"), 0.0)  # Axolotl holds nothing else out of training
        conv.put(("data", "evaluation_split"), "validation")
        return
    conv.put(("data", "splits", "validation"), None, ("val_set_size",) if conv.has(("val_set_size",)) else None)
    _default(conv, (*split, "validation_fraction"))
    conv.note(
        "Axolotl trains on every row (val_set_size 0); the recipe carves data.split.test_fraction "
        f"({schema_default((*split, 'test_fraction'))}) of train into a test split for evaluate",
        "set data.split.test_fraction: 0 and evaluate on data you hold out yourself",
    )


# --- trainer -------------------------------------------------------------------------------------


def _trainer(conv: Conversion) -> None:
    t: KeyPath = ("trainer",)
    simple = (
        ("micro_batch_size", "batch_size"),
        ("gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("num_epochs", "epochs"),
        ("max_steps", "train_steps"),
        ("eval_batch_size", "eval_batch_size"),
        ("early_stopping_patience", "early_stop"),
        ("save_total_limit", "checkpoints_to_keep"),
    )
    for key, target in simple:
        value = conv.take((key,))
        if value is not None:
            conv.put((*t, target), value, (key,))
        elif (*t, target) in AXOLOTL:
            _default(conv, (*t, target))
    total = conv.take(("batch_size",))
    if isinstance(total, int) and conv.peek(("gradient_accumulation_steps",)) is None:
        micro = conv.get((*t, "batch_size")) or 1
        if total % micro:
            conv.warn(
                ("batch_size",), f"{total} rows is not a whole number of micro batches of {micro}", section="trainer"
            )
        else:
            conv.put((*t, "gradient_accumulation_steps"), total // micro, ("batch_size",))
    rate = conv.take(("learning_rate",))
    if rate is None:
        raise import_error(conv.source, (), "no learning_rate (Axolotl requires one)", "add learning_rate: 0.0002")
    conv.put((*t, "learning_rate"), float(rate), ("learning_rate",))
    _schedule(conv)
    _optimizer(conv)
    if conv.peek(("max_grad_norm",)) is not None:
        conv.put((*t, "gradient_clipping", "clipglobalnorm"), conv.take(("max_grad_norm",)), ("max_grad_norm",))
    else:
        _default(conv, (*t, "gradient_clipping", "clipglobalnorm"))
    checkpointing = conv.peek(("gradient_checkpointing",))
    if checkpointing is not None and as_bool(checkpointing) is not False:
        value = conv.take(("gradient_checkpointing",))
        conv.put((*t, "enable_gradient_checkpointing"), True, ("gradient_checkpointing",))
        if as_bool(value) is not True:
            conv.caution(("gradient_checkpointing",), f"{value} is carried as true (torch's gradient checkpointing)")
    if conv.peek(("group_by_length",)) is not None:
        conv.put((*t, "group_by_length"), bool(as_bool(conv.take(("group_by_length",)))), ("group_by_length",))
    else:
        _default(conv, (*t, "group_by_length"))
    _steps(conv, "eval_steps", "eval_steps", "how often to validate")
    _steps(conv, "save_steps", "steps_per_checkpoint", "how often to checkpoint")
    length = conv.take(("sequence_len",))
    if length is not None:
        conv.put(("preprocessing", "global_max_sequence_length"), length, ("sequence_len",))
        conv.caution(
            ("sequence_len",),
            "Axolotl drops rows longer than sequence_len; a recipe cuts their prompt from the left and keeps them",
        )
    else:
        _default(conv, ("preprocessing", "global_max_sequence_length"))
    if conv.get((*t, "early_stop")) not in (None, -1) and conv.get(("data", "evaluation_split")) != "validation":
        conv.caution(
            ("early_stopping_patience",), "early stopping needs a validation split, and val_set_size gives none"
        )


def _steps(conv: Conversion, key: str, target: str, what: str) -> None:
    value = conv.take((key,))
    if value is None:
        return
    max_steps = conv.get(("trainer", "train_steps"))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        conv.put(("trainer", target), value, (key,))
    elif isinstance(value, float) and 0 < value < 1 and isinstance(max_steps, int):
        conv.put(("trainer", target), max(1, round(value * max_steps)), (key,))
    else:
        conv.warn(
            (key,),
            f"{value} as a share of the steps has no equivalent before the data is read ({what})",
            "set trainer." + target + " to a number of steps (plan shows the steps)",
            section="trainer",
        )


def _schedule(conv: Conversion) -> None:
    s: KeyPath = ("trainer", "learning_rate_scheduler")
    name = conv.take(("lr_scheduler",))
    if name is None:
        _default(conv, (*s, "decay"))
    elif name in SCHEDULERS:
        conv.put((*s, "decay"), SCHEDULERS[name], ("lr_scheduler",))
    else:
        conv.warn(
            ("lr_scheduler",),
            f"the {name} schedule has no equivalent",
            f"the recipe keeps trainer.learning_rate_scheduler.decay {schema_default((*s, 'decay'))}",
            section="trainer",
        )
    ratio, steps = conv.take(("warmup_ratio",)), conv.take(("warmup_steps",))
    max_steps = conv.get(("trainer", "train_steps"))
    if ratio is not None:
        conv.put((*s, "warmup_fraction"), float(ratio), ("warmup_ratio",))
    elif steps is not None and isinstance(max_steps, int) and max_steps > 0:
        conv.put((*s, "warmup_fraction"), min(float(steps) / max_steps, 0.99), ("warmup_steps",))
    elif steps is not None:
        conv.warn(
            ("warmup_steps",),
            "warmup in steps has no equivalent before the data is read",
            "set trainer.learning_rate_scheduler.warmup_fraction (plan shows the steps)",
            section="trainer",
        )
    else:
        _default(conv, (*s, "warmup_fraction"))
        conv.note("Axolotl warms up for 3% of the steps but at most 100 steps; the recipe's warmup_fraction has no cap")


def _optimizer(conv: Conversion) -> None:
    o: KeyPath = ("trainer", "optimizer")
    name = conv.take(("optimizer",))
    if name is None:
        _default(conv, (*o, "type"))
    elif name in OPTIMIZERS:
        conv.put((*o, "type"), OPTIMIZERS[name], ("optimizer",))
    elif name in NEAR_OPTIMIZERS:
        conv.put((*o, "type"), NEAR_OPTIMIZERS[name], ("optimizer",))
        conv.caution(
            ("optimizer",),
            f"{name} is carried as {NEAR_OPTIMIZERS[name]} (the same AdamW update, other memory handling)",
        )
    else:
        conv.warn(
            ("optimizer",),
            f"the {name} optimizer has no equivalent",
            f"the recipe uses {schema_default((*o, 'type'))}",
            section="trainer",
        )
    if conv.peek(("weight_decay",)) is not None:
        conv.put((*o, "weight_decay"), conv.take(("weight_decay",)), ("weight_decay",))
    else:
        _default(conv, (*o, "weight_decay"))
    beta1, beta2 = conv.take(("adam_beta1",)), conv.take(("adam_beta2",))
    if beta1 is not None or beta2 is not None:
        default = schema_default((*o, "betas"))
        betas = [beta1 if beta1 is not None else default[0], beta2 if beta2 is not None else default[1]]
        conv.put((*o, "betas"), betas, ("adam_beta1",) if beta1 is not None else ("adam_beta2",))
    if conv.peek(("adam_epsilon",)) is not None:
        conv.put((*o, "eps"), conv.take(("adam_epsilon",)), ("adam_epsilon",))
