"""`lora-recipes import ludwig`: a Ludwig LLM config (`model_type: llm`, Ludwig 0.9/0.10, the
format LoRA Land's adapters were trained from) as a recipe.

Where Ludwig's own defaults differ from the recipe's, the recipe gets Ludwig's value written out,
so it trains what Ludwig would have trained: Ludwig's fine-tuning trainer defaults to a learning
rate of 0.001, 100 epochs, plain Adam, no decay or warmup and no gradient accumulation; Ludwig
quantizes nothing unless asked (and then computes in float16), trains every weight without an
adapter, splits a single dataset 70/10/20 at random and cuts no sequence. Those defaults are
Ludwig's (`LUDWIG` below, from ludwig/schema at v0.10); the recipe's own come from the schema.

    model_type: llm                   (anything else: an error)
    base_model                        base_model (Ludwig's short names expanded)
    input_features / output_features  the prompt's columns / output.column, output.type (one output)
    prompt.template, task, retrieval  prompt.template ({column} kept, __task__ written in,
                                      __sample__ the input column), prompt.retrieval.k
    adapter, quantization             adapter, quantization
    model_parameters                  model_parameters.trust_remote_code
    trainer                           trainer (scheduler, optimizer, clipping, early stop, ...)
    preprocessing                     preprocessing.global_max_sequence_length, data.split
    generation                        generation
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from lora_recipes.importers.common import Conversion, as_bool, import_error, read_source, schema_default
from lora_recipes.recipe.yamlio import KeyPath

# Ludwig's defaults where a recipe's may differ (ludwig/schema, v0.10: FineTuneTrainerConfig,
# LRSchedulerConfig, QuantizationConfig, RandomSplitConfig, LLMGenerationConfig).
LUDWIG: dict[KeyPath, Any] = {
    ("trainer", "learning_rate"): 0.001,
    ("trainer", "epochs"): 100,
    ("trainer", "batch_size"): 1,
    ("trainer", "eval_batch_size"): 2,
    ("trainer", "gradient_accumulation_steps"): 1,  # "auto" with a fixed batch size
    ("trainer", "early_stop"): 5,
    ("trainer", "enable_gradient_checkpointing"): False,
    ("trainer", "optimizer", "type"): "adam",
    ("trainer", "learning_rate_scheduler", "decay"): "none",
    ("trainer", "learning_rate_scheduler", "warmup_fraction"): 0.0,
    ("trainer", "gradient_clipping", "clipglobalnorm"): 0.5,
    ("quantization", "bnb_4bit_compute_dtype"): "float16",
    ("data", "split", "validation_fraction"): 0.1,
    ("data", "split", "test_fraction"): 0.2,
    ("preprocessing", "global_max_sequence_length"): "p100",  # no cut: every training row whole
    ("generation", "temperature"): 0.1,  # do_sample: true
    ("generation", "top_p"): 1.0,
}
LUDWIG_TOP_K = 50
LUDWIG_CATEGORY_MAX_NEW_TOKENS = 32

# Ludwig's short model names (ludwig/schema/llms/base_model.py), the common ones.
MODEL_PRESETS = {
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
    "llama-2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.1",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1",
    "zephyr-7b-beta": "HuggingFaceH4/zephyr-7b-beta",
    "phi-2": "microsoft/phi-2",
    "opt-350m": "facebook/opt-350m",
}

# Values that change nothing in a recipe (Ludwig's defaults for settings it has and a recipe has
# not): reading them is enough.
INERT: dict[KeyPath, Any] = {
    ("backend", "type"): "local",
    ("trainer", "regularization_type"): "l2",
    ("trainer", "regularization_lambda"): 0,
    ("trainer", "should_shuffle"): True,
    ("trainer", "use_mixed_precision"): False,
    ("trainer", "compile"): False,
    ("trainer", "evaluate_training_set"): False,
    ("trainer", "skip_all_evaluation"): False,
    ("trainer", "learning_rate_scaling"): "linear",  # one process: nothing to scale
    ("trainer", "base_learning_rate"): 0.0,
    ("trainer", "increase_batch_size_on_plateau"): 0,
    ("trainer", "checkpoints_per_epoch"): 0,
    ("trainer", "learning_rate_scheduler", "reduce_on_plateau"): 0,
    ("adapter", "postprocessor", "merge_adapter_into_base_model"): False,
    ("adapter", "postprocessor", "progressbar"): False,
    ("adapter", "use_rslora"): False,
    ("adapter", "use_dora"): False,
    ("preprocessing", "sample_ratio"): 1.0,
    ("quantization", "llm_int8_has_fp16_weight"): False,
    ("model_parameters", "neftune_noise_alpha"): 0,
    ("generation", "num_beams"): 1,
    ("generation", "repetition_penalty"): 1.0,
}
SECTIONS = {
    "trainer": "trainer",
    "adapter": "adapter",
    "quantization": "quantization",
    "model_parameters": "model_parameters",
    "prompt": "prompt",
    "input_features": "prompt",
    "output_features": "output",
    "preprocessing": "data",
    "generation": "generation",
}

# What to do instead, for the settings without an equivalent that configs often hold.
HINTS = {
    "output_features.preprocessing.max_sequence_length": "a recipe never cuts the answer; long rows lose the start "
    "of their prompt (preprocessing.global_max_sequence_length)",
    "trainer.learning_rate_scheduler.reduce_on_plateau": "a recipe's schedule is warmup then decay",
    "trainer.learning_rate_scheduler.warmup_evaluations": "set trainer.learning_rate_scheduler.warmup_fraction",
    "preprocessing.sample_ratio": "data.max_rows.train caps the training rows (the first N, not a random share)",
    "preprocessing.sample_size": "data.max_rows.train caps the training rows (the first N, not a random sample)",
    "trainer.checkpoints_per_epoch": "set trainer.steps_per_checkpoint (plan shows the steps per epoch)",
    "trainer.use_mixed_precision": "model_parameters.dtype and quantization.bnb_4bit_compute_dtype set the precision",
    "trainer.validation_metric": "a recipe validates on the loss",
    "trainer.gradient_clipping.clipnorm": "trainer.gradient_clipping.clipglobalnorm clips the global norm",
    "trainer.gradient_clipping.clipvalue": "trainer.gradient_clipping.clipglobalnorm clips the global norm",
    "backend.type": "data parallel with accelerate launch",
    "hyperopt": "one recipe is one set of hyperparameters",
    "model_parameters.rope_scaling": "the base model's own RoPE settings are used",
}

OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "sgd": "sgd", "paged_adamw_8bit": "paged_adamw_8bit"}
# Same update rule, other memory handling: carried with a warning.
NEAR_OPTIMIZERS = {
    "paged_adam": "adam",
    "paged_adamw": "adamw",
    "adamw_8bit": "paged_adamw_8bit",
    "paged_adam_8bit": "paged_adamw_8bit",
}
DECAYS = {"cosine": "cosine", "linear": "linear", None: "none"}


def convert(path: Path, dataset: str | None = None) -> Conversion:
    source = read_source(path)
    conv = Conversion(source, "Ludwig")
    conv.put(("version",), 1)
    model_type = conv.take(("model_type",))
    if model_type != "llm":
        if model_type is None:
            raise import_error(
                source,
                (),
                "no model_type: Ludwig's default is ecd, not an LLM",
                "only model_type: llm becomes a recipe",
            )
        raise import_error(
            source,
            ("model_type",),
            f"model_type {model_type} is not an LLM config",
            "only model_type: llm becomes a recipe",
        )
    base = conv.take(("base_model",))
    if not isinstance(base, str) or not base:
        raise import_error(source, ("base_model",), "no base_model", "name the model to fine-tune")
    conv.put(("base_model",), MODEL_PRESETS.get(base, base), ("base_model",))
    if conv.has(("model_parameters", "trust_remote_code")):
        value = _flag(conv.take(("model_parameters", "trust_remote_code")))
        conv.put(("model_parameters", "trust_remote_code"), value, ("model_parameters", "trust_remote_code"))

    has_adapter = _adapter(conv)
    _quantization(conv, has_adapter)
    inputs = _inputs(conv)
    output_type = _output(conv)
    _prompt(conv, inputs)
    _data(conv, dataset)
    trains = _trainer(conv)
    _generation(conv, output_type)
    conv.leftovers(SECTIONS, INERT, HINTS)
    if not trains:
        conv.note("the recipe keeps its own trainer defaults, since Ludwig's trainer would not have trained")
    return conv


# --- model -------------------------------------------------------------------------------------


def _adapter(conv: Conversion) -> bool:
    """The adapter; False for full fine-tuning (Ludwig's default when `adapter` is absent)."""
    if not conv.has(("adapter",)) or conv.peek(("adapter",)) is None:
        conv.take(("adapter",))
        conv.put(("adapter", "type"), "none")
        conv.note("no adapter: Ludwig fine-tunes every weight, and so does the recipe (adapter.type: none)")
        return False
    kind = conv.take(("adapter", "type"), "lora")
    if kind not in ("lora", "adalora"):
        raise import_error(
            conv.source,
            ("adapter", "type"),
            f"adapter type {kind} has no equivalent",
            "a recipe trains a LoRA adapter (or, without one, every weight)",
        )
    conv.put(("adapter", "type"), "lora", ("adapter", "type"))
    if kind == "adalora":
        conv.warn(
            ("adapter", "type"), "AdaLoRA has no equivalent: the recipe trains a plain LoRA adapter", section="adapter"
        )
    for key, target in (("r", "r"), ("alpha", "alpha"), ("dropout", "dropout"), ("bias_type", "bias")):
        if conv.has(("adapter", key)):
            conv.put(("adapter", target), conv.take(("adapter", key)), ("adapter", key))
    if conv.has(("adapter", "target_modules")):
        modules = conv.take(("adapter", "target_modules"))
        if modules is not None:
            conv.put(
                ("adapter", "target_modules"),
                [modules] if isinstance(modules, str) else modules,
                ("adapter", "target_modules"),
            )
    if conv.peek(("adapter", "postprocessor", "merge_adapter_into_base_model")) is True:
        conv.warn(
            ("adapter", "postprocessor", "merge_adapter_into_base_model"),
            "merging is not part of training",
            "after training: lora-recipes export RUN_DIR --merged OUT",
            section="adapter",
        )
    return True


def _quantization(conv: Conversion, has_adapter: bool) -> None:
    q = ("quantization",)
    if not conv.has(q) or conv.peek(q) is None:
        conv.take(q)
        conv.put((*q, "bits"), None)  # Ludwig loads the base model unquantized unless told
        return
    bits = conv.take((*q, "bits"), 4)
    if not has_adapter:
        raise import_error(
            conv.source, q, "quantization without an adapter", "Ludwig refuses it too: add adapter: {type: lora}"
        )
    conv.put((*q, "bits"), bits, (*q, "bits") if conv.has((*q, "bits")) else q)
    for key in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "llm_int8_threshold"):
        if conv.has((*q, key)):
            value = conv.take((*q, key))
            conv.put((*q, key), _flag(value) if key == "bnb_4bit_use_double_quant" else value, (*q, key))
    _ludwig_default(conv, (*q, "bnb_4bit_compute_dtype"))


def _flag(value: Any) -> Any:
    """A boolean written the YAML 1.1 way (yes, no, on, off) as a boolean; anything else as it is
    (the recipe's checks report it at the source line)."""
    flag = as_bool(value)
    return value if flag is None else flag


def _ludwig_default(conv: Conversion, path: KeyPath) -> None:
    """Write Ludwig's default at `path` unless the recipe has a value there or the recipe's own
    default is the same."""
    if conv.get(path) is None and LUDWIG[path] != schema_default(path):
        conv.put(path, LUDWIG[path])


# --- features and prompt -----------------------------------------------------------------------


def _inputs(conv: Conversion) -> list[str]:
    features = conv.peek(("input_features",))
    if not isinstance(features, list) or not features:
        raise import_error(conv.source, ("input_features",), "no input feature", "an LLM config names its input column")
    columns = []
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or not isinstance(feature.get("name"), str):
            raise import_error(conv.source, ("input_features", i), "an input feature needs a name")
        name = conv.take(("input_features", i, "name"))
        columns.append(conv.take(("input_features", i, "column"), name))
        kind = conv.take(("input_features", i, "type"), "text")
        if kind != "text":
            conv.warn(
                ("input_features", i, "type"), f"a {kind} input has no equivalent: it is read as text", section="prompt"
            )
    return columns


def _output(conv: Conversion) -> str:
    features = conv.peek(("output_features",))
    if not isinstance(features, list) or not features:
        raise import_error(conv.source, ("output_features",), "no output feature", "a recipe trains one answer column")
    if len(features) > 1:
        raise import_error(
            conv.source,
            ("output_features", 1),
            f"{len(features)} output features: a recipe trains one answer column",
            "keep one output feature",
        )
    f: KeyPath = ("output_features", 0)
    if not isinstance(features[0], dict) or not isinstance(features[0].get("name"), str):
        raise import_error(conv.source, f, "the output feature needs a name")
    name = conv.take((*f, "name"))
    conv.put(("output", "column"), conv.take((*f, "column"), name), (*f, "name"))
    kind = conv.take((*f, "type"), "text")
    if kind == "category":
        match = conv.peek((*f, "decoder", "match"))
        if isinstance(match, dict) and match:
            conv.take((*f, "decoder", "match"))
            conv.take((*f, "decoder", "type"))
            conv.put(("output", "type"), "category", (*f, "type"))
            conv.put(("output", "labels"), [str(k) for k in match], (*f, "decoder", "match"))
            kinds = {str(m.get("type")) for m in match.values() if isinstance(m, dict)}
            if kinds - {"contains"}:
                conv.caution(
                    (*f, "decoder", "match"),
                    f"Ludwig parses labels with {', '.join(sorted(kinds))} rules; a recipe scores the answer "
                    "against the labels' text",
                )
            return "category"
        conv.caution(
            (*f, "type"),
            "Ludwig learns the category labels from the data, which a recipe names: imported as a text output",
            "set output.type: category and output.labels: [...] (and output.label_map for coded labels)",
        )
    elif kind != "text":
        raise import_error(
            conv.source, (*f, "type"), f"a {kind} output has no equivalent", "use a text or category output"
        )
    conv.put(("output", "type"), "text", (*f, "type"))
    return "text"


_SPEC = re.compile(r"^\.(\d+)f$")


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _prompt(conv: Conversion, inputs: list[str]) -> None:
    p: KeyPath = ("prompt",)
    template = conv.take((*p, "template"))
    task = conv.take((*p, "task"))
    retrieval = conv.peek((*p, "retrieval")) or {}
    kind = conv.take((*p, "retrieval", "type"))
    k = conv.take((*p, "retrieval", "k"), 0)
    if kind is not None and not k:
        k = 1  # Ludwig's own rule: a retrieval type draws at least one row
    if kind is not None:
        if kind != "random":
            conv.warn(
                (*p, "retrieval", "type"),
                f"{kind} retrieval has no equivalent: the recipe draws {k} random training rows instead",
                section="prompt",
            )
        conv.put(
            (*p, "retrieval", "k"), int(k), (*p, "retrieval", "k") if "k" in retrieval else (*p, "retrieval", "type")
        )
        conv.caution(
            (*p, "retrieval"),
            "a recipe draws its few-shot rows once, with the seed, for every prompt, and places them before the prompt",
        )
    if template is None:
        if task is not None:
            template = (
                "SAMPLE INPUT: {__sample__}\n\nUSER: Complete the following task: {__task__}\n\nASSISTANT:\n"
                if kind is None
                else "Below is relevant context:\n\nCONTEXT: {__context__}\n\nSAMPLE INPUT: {__sample__}\n\n"
                "USER: Complete the following task: {__task__}\n\nASSISTANT:\n"
            )
            where: KeyPath = (*p, "task")
        else:
            if len(inputs) > 1:
                conv.caution(("input_features", 1), "without a prompt template only the first input is the prompt")
            conv.put((*p, "template"), "{" + inputs[0] + "}", ("input_features", 0, "name"))
            return
    else:
        where = (*p, "template")
    conv.put((*p, "template"), _template(conv, str(template), task, inputs[0], where), where)


def _template(conv: Conversion, template: str, task: Any, sample: str, where: KeyPath) -> str:
    """A Ludwig template (Python format fields) as a recipe template ({column} only)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise import_error(conv.source, where, f"the template does not parse: {exc}") from None
    out = []
    for literal, name, spec, conversion in parts:
        out.append(_escape(literal))
        if name is None:
            continue
        if name == "__task__":
            out.append(_escape(str(task or "")))
        elif name == "__sample__":
            out.append("{" + sample + "}")
            conv.caution(
                where, f"{{__sample__}} becomes {{{sample}}}: Ludwig writes the input JSON-escaped, a recipe as it is"
            )
        elif name == "__context__":
            conv.caution(where, "{__context__} is left out: a recipe places its few-shot rows before the prompt")
        else:
            column = name
            digits = _SPEC.match(spec or "")
            if digits:
                column = f"{name}_{digits.group(1)}f"
                conv.put(
                    ("data", "columns", column), {"from": name, "op": "round", "digits": int(digits.group(1))}, where
                )
            elif spec or conversion:
                conv.caution(where, f"the format of {{{name}:{spec}}} is dropped: a recipe writes the value as it is")
            out.append("{" + column + "}")
    return "".join(out)


# --- data -------------------------------------------------------------------------------------


def _data(conv: Conversion, dataset: str | None) -> None:
    if dataset is None:
        conv.put(("data", "dataset"), "CHANGE-ME")
        conv.note(
            "a Ludwig config names no dataset (Ludwig is given it when training): data.dataset is CHANGE-ME",
            "set data.dataset in the recipe, pass --dataset to import, or --data to each command",
        )
    else:
        conv.put(("data", "dataset"), dataset)
    pre: KeyPath = ("preprocessing",)
    limit = conv.take((*pre, "global_max_sequence_length"))
    if limit is not None:
        conv.put((*pre, "global_max_sequence_length"), limit, (*pre, "global_max_sequence_length"))
    else:
        _ludwig_default(conv, (*pre, "global_max_sequence_length"))
    split = conv.peek((*pre, "split"))
    kind = conv.take((*pre, "split", "type"), "random") if isinstance(split, dict) else "random"
    if kind == "fixed":
        conv.put(("data", "split", "type"), "column", (*pre, "split", "type"))
        column = conv.take((*pre, "split", "column"))
        if column is not None:
            conv.put(("data", "split", "column"), column, (*pre, "split", "column"))
        return
    probabilities = conv.take((*pre, "split", "probabilities"))
    if kind not in ("random", "stratify", "hash"):
        conv.warn(
            (*pre, "split", "type"),
            f"a {kind} split has no equivalent: rows are split by a hash of their content",
            section="data",
        )
    elif kind != "random":
        column = conv.take((*pre, "split", "column"))
        conv.caution(
            (*pre, "split", "type"),
            f"a {kind} split on {column!r} is carved by a hash of each row's content"
            + (" (category outputs are stratified by label)" if kind == "stratify" else ""),
        )
    if isinstance(probabilities, list) and len(probabilities) == 3:
        where = (*pre, "split", "probabilities")
        conv.put(("data", "split", "validation_fraction"), float(probabilities[1]), where)
        conv.put(("data", "split", "test_fraction"), float(probabilities[2]), where)
    else:
        _ludwig_default(conv, ("data", "split", "validation_fraction"))
        _ludwig_default(conv, ("data", "split", "test_fraction"))


# --- trainer ------------------------------------------------------------------------------------


def _trainer(conv: Conversion) -> bool:
    """The trainer; False when Ludwig's would not train (type none, Ludwig's default)."""
    t: KeyPath = ("trainer",)
    kind = conv.take((*t, "type"), "none")
    if kind != "finetune":
        message = f"Ludwig's trainer type {kind} does not train (zero- or few-shot), so nothing of it is carried"
        hint = "the recipe fine-tunes; score the base model alone with evaluate --base"
        if conv.has((*t, "type")):
            conv.warn((*t, "type"), message, hint, section="trainer")
        else:
            conv.note(f"no trainer: {message}", hint)
        return False
    conv.put((*t, "type"), "finetune", (*t, "type"))
    for key in ("epochs", "train_steps", "early_stop", "enable_gradient_checkpointing"):
        if conv.has((*t, key)):
            value = conv.take((*t, key))
            conv.put((*t, key), _flag(value) if key == "enable_gradient_checkpointing" else value, (*t, key))
        elif (*t, key) in LUDWIG:
            _ludwig_default(conv, (*t, key))
    _number_or_auto(conv, "learning_rate", "Ludwig's learning-rate finder has no equivalent")
    _number_or_auto(conv, "batch_size", "Ludwig's batch-size tuner has no equivalent")
    eval_batch = conv.take((*t, "eval_batch_size"))
    if isinstance(eval_batch, int) and eval_batch > 0:
        conv.put((*t, "eval_batch_size"), eval_batch, (*t, "eval_batch_size"))
    elif eval_batch == "auto":
        conv.caution((*t, "eval_batch_size"), "auto has no equivalent: validation batches are trainer.batch_size rows")
    elif not conv.has((*t, "eval_batch_size")):
        _ludwig_default(conv, (*t, "eval_batch_size"))
    _accumulation(conv)
    steps = conv.take((*t, "steps_per_checkpoint"), 0)
    if isinstance(steps, int) and steps > 0:
        where = (*t, "steps_per_checkpoint")
        conv.put((*t, "eval_steps"), steps, where)  # Ludwig validates at every checkpoint
        conv.put((*t, "steps_per_checkpoint"), steps, where)
    else:
        conv.note(
            "Ludwig validates and checkpoints once per epoch (steps_per_checkpoint 0), which a recipe cannot say "
            "before the data is read: trainer.eval_steps and steps_per_checkpoint keep the recipe's defaults",
            "set trainer.eval_steps to the steps per epoch that plan shows",
            (*t, "steps_per_checkpoint") if conv.has((*t, "steps_per_checkpoint")) else (),
        )
    if conv.has((*t, "eval_steps")):
        conv.warn(
            (*t, "eval_steps"),
            "Ludwig's eval_steps caps the batches of each evaluation; no equivalent (a recipe's trainer.eval_steps "
            "is how often to validate)",
            section="trainer",
        )
    _scheduler(conv)
    _optimizer(conv)
    clip = ("trainer", "gradient_clipping")
    if conv.has((*clip, "clipglobalnorm")):
        conv.put((*clip, "clipglobalnorm"), conv.take((*clip, "clipglobalnorm")), (*clip, "clipglobalnorm"))
    else:
        _ludwig_default(conv, (*clip, "clipglobalnorm"))
    conv.note(
        "Ludwig has no cap on steps; the recipe's trainer.max_train_steps caps them "
        f"(at {schema_default(('trainer', 'max_train_steps')):,} by default)"
    )
    return True


def _number_or_auto(conv: Conversion, key: str, auto: str) -> None:
    path: KeyPath = ("trainer", key)
    value = conv.take(path)
    if value == "auto":
        conv.warn(path, auto, f"the recipe keeps trainer.{key} {schema_default(path)}", section="trainer")
    elif value is not None:
        conv.put(path, value, path)
    else:
        _ludwig_default(conv, path)


def _accumulation(conv: Conversion) -> None:
    t: KeyPath = ("trainer",)
    steps = conv.take((*t, "gradient_accumulation_steps"), "auto")
    effective = conv.take((*t, "effective_batch_size"), "auto")
    batch = conv.get((*t, "batch_size"))
    if isinstance(steps, int):
        conv.put((*t, "gradient_accumulation_steps"), steps, (*t, "gradient_accumulation_steps"))
    elif isinstance(effective, int) and isinstance(batch, int):
        where = (*t, "effective_batch_size")
        if effective % batch:
            conv.warn(where, f"{effective} rows is not a whole number of batches of {batch}", section="trainer")
        else:
            conv.put((*t, "gradient_accumulation_steps"), effective // batch, where)
    else:
        _ludwig_default(conv, (*t, "gradient_accumulation_steps"))


def _scheduler(conv: Conversion) -> None:
    s: KeyPath = ("trainer", "learning_rate_scheduler")
    decay = conv.take((*s, "decay"))
    if decay in DECAYS:
        if conv.has((*s, "decay")) and decay is not None:
            conv.put((*s, "decay"), DECAYS[decay], (*s, "decay"))
        else:
            _ludwig_default(conv, (*s, "decay"))
    else:
        conv.warn(
            (*s, "decay"),
            f"{decay} decay has no equivalent",
            f"the recipe keeps trainer.learning_rate_scheduler.decay {schema_default((*s, 'decay'))}",
            section="trainer",
        )
    if conv.has((*s, "warmup_fraction")):
        conv.put((*s, "warmup_fraction"), conv.take((*s, "warmup_fraction")), (*s, "warmup_fraction"))
    else:
        _ludwig_default(conv, (*s, "warmup_fraction"))


def _optimizer(conv: Conversion) -> None:
    o: KeyPath = ("trainer", "optimizer")
    kind = conv.take((*o, "type"))
    if kind in OPTIMIZERS:
        conv.put((*o, "type"), OPTIMIZERS[kind], (*o, "type"))
    elif kind in NEAR_OPTIMIZERS:
        conv.put((*o, "type"), NEAR_OPTIMIZERS[kind], (*o, "type"))
        conv.caution(
            (*o, "type"), f"{kind} is carried as {NEAR_OPTIMIZERS[kind]} (the same update, other memory handling)"
        )
    elif kind is None:
        _ludwig_default(conv, (*o, "type"))
    else:
        conv.warn(
            (*o, "type"),
            f"the {kind} optimizer has no equivalent",
            f"the recipe uses {schema_default((*o, 'type'))}",
            section="trainer",
        )
    for key in ("betas", "eps", "weight_decay"):
        if conv.has((*o, key)):
            conv.put((*o, key), conv.take((*o, key)), (*o, key))


# --- generation -----------------------------------------------------------------------------


def _generation(conv: Conversion, output_type: str) -> None:
    g: KeyPath = ("generation",)
    tokens = conv.take((*g, "max_new_tokens"))
    if tokens is not None:
        conv.put((*g, "max_new_tokens"), tokens, (*g, "max_new_tokens"))
    elif output_type == "category":
        conv.put((*g, "max_new_tokens"), LUDWIG_CATEGORY_MAX_NEW_TOKENS)
    else:
        limit = conv.peek(("output_features", 0, "preprocessing", "max_sequence_length"))
        limit = limit if isinstance(limit, int) else conv.peek(("preprocessing", "global_max_sequence_length"))
        if isinstance(limit, int):
            conv.put((*g, "max_new_tokens"), limit)  # Ludwig's rule for text outputs
        else:
            conv.note(
                "Ludwig generates up to half the model's context window for a text output without a length; "
                f"the recipe keeps generation.max_new_tokens {schema_default((*g, 'max_new_tokens'))}"
            )
    sample = _flag(conv.take((*g, "do_sample"), True))
    temperature = conv.take((*g, "temperature"))
    if sample is False:
        conv.put((*g, "temperature"), 0.0, (*g, "do_sample"))
    elif temperature is not None:
        conv.put((*g, "temperature"), temperature, (*g, "temperature"))
    else:
        _ludwig_default(conv, (*g, "temperature"))
    if conv.has((*g, "top_p")):
        conv.put((*g, "top_p"), conv.take((*g, "top_p")), (*g, "top_p"))
    top_k = conv.take((*g, "top_k"), LUDWIG_TOP_K)
    if sample is not False and top_k != 0:
        message = f"Ludwig samples from the {top_k} likeliest tokens; a recipe samples from all of them (top_p only)"
        if conv.has((*g, "top_k")):
            conv.caution((*g, "top_k"), message)
        else:
            conv.note(message)
