"""Cross-field rules: what a recipe must satisfy that its JSON Schema cannot say.

Each rule is a small function, registered with `@rule` into `RULES` in the order its messages are
reported. A rule reads the recipe with defaults filled in, yields a `Violation` for each problem it
finds (the key path, a plain message and a hint), and never raises: values of the wrong type are the
schema's to report, so rules skip what they cannot read. `rule_issues` runs every rule and collects
every violation, so all mistakes are reported together.

Every rule has an invalid recipe in `tests/fixtures/invalid/` that declares `# rule: <name>` and the
exact message it produces; the fixtures test fails for a rule without one.

The serving rules report the errors of `recipe/serving.py` (what vLLM or LoRAX would refuse
whatever its flags) for the servers in `serving.targets`; its warnings and notes (a flag to pass,
a slower path) do not make a recipe invalid: `serving_notices` returns them, placed like errors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from lora_recipes.errors import Issue, Notice
from lora_recipes.recipe.checks import Locate, did_you_mean
from lora_recipes.recipe.schema import fill_defaults
from lora_recipes.recipe.serving import Finding, check_adapter
from lora_recipes.recipe.template import TemplateError, parse_template
from lora_recipes.recipe.yamlio import KeyPath, dotted


@dataclass(frozen=True)
class Violation:
    """One broken rule: the key it is reported at (its key when `key`, else its value)."""

    path: KeyPath
    message: str
    hint: str | None = None
    key: bool = False


Rule = Callable[[dict[str, Any]], Iterator[Violation]]

# Every rule by name (its function's name), in the order its violations are reported.
RULES: dict[str, Rule] = {}


def rule(check: Rule) -> Rule:
    """Register `check` in `RULES` under its function name; it must say what it forbids and why."""
    name = check.__name__
    if name in RULES:
        raise ValueError(f"rule {name} is registered twice")
    if not (check.__doc__ or "").strip():
        raise ValueError(f"rule {name} needs a docstring saying what it forbids and why")
    RULES[name] = check
    return check


def rule_issues(raw: Any, locate: Locate, skip: Collection[KeyPath] = ()) -> list[Issue]:
    """Every violation of every rule, checked on the recipe with defaults filled in; none at or
    under the paths in `skip` (values already reported and dropped)."""
    if not isinstance(raw, dict):
        return []
    data = fill_defaults(raw)
    return [
        Issue(locate(v.path, v.key), dotted(v.path), v.message, v.hint)
        for check in RULES.values()
        for v in check(data)
        if not any(v.path[: len(s)] == s for s in skip)
    ]


def _get(data: Any, path: KeyPath, kind: type | tuple[type, ...]) -> Any:
    """The value at `path` if it exists and has the expected type, else None (the schema reports
    wrong types; rules skip what they cannot read)."""
    node = data
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return None
        elif not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if kind is int and isinstance(node, bool):
        return None
    return node if isinstance(node, kind) else None


def _template_columns(data: dict[str, Any]) -> tuple[str, ...] | None:
    """The columns the prompt template reads; None when there is no template or it does not parse
    (`template_parses` reports that, and the rules about columns stay silent)."""
    template = _get(data, ("prompt", "template"), str)
    if template is None:
        return None
    try:
        return parse_template(template).columns
    except TemplateError:
        return None


# Metrics that compare a prediction with a declared label set.
LABEL_METRICS = {"accuracy", "label_match", "macro_f1"}


# --- output --------------------------------------------------------------------------------------


@rule
def category_output_needs_labels(data: dict[str, Any]) -> Iterator[Violation]:
    """A category output without `output.labels`: the model answers with one of the labels, and
    scoring, ranking and stratified splits all need the label set."""
    labels = _get(data, ("output", "labels"), list)
    if _get(data, ("output", "type"), str) == "category" and not labels:
        yield Violation(("output",), "a category output needs its labels", "add output.labels: [label, ...]", key=True)


@rule
def labels_need_category_output(data: dict[str, Any]) -> Iterator[Violation]:
    """`output.labels` or `output.label_map` on a text output: text outputs are generated freely and
    never read them, so writing them is a mistake about the output type."""
    labels = _get(data, ("output", "labels"), list)
    label_map = _get(data, ("output", "label_map"), dict)
    if _get(data, ("output", "type"), str) == "text" and (labels or label_map):
        which = "labels" if labels else "label_map"
        yield Violation(
            ("output", which), f"output.{which} is only used by category outputs", "set output.type: category"
        )


@rule
def label_map_targets_are_labels(data: dict[str, Any]) -> Iterator[Violation]:
    """An `output.label_map` entry that maps to a text outside `output.labels`: the model answers
    with a label, so rows mapped elsewhere would have an answer it can never give (mostly a typo)."""
    labels = _get(data, ("output", "labels"), list) or []
    label_map = _get(data, ("output", "label_map"), dict) or {}
    for raw_value, text in label_map.items():
        if labels and isinstance(text, str) and text not in labels:
            hint = did_you_mean(text, [str(x) for x in labels]) or "allowed: " + ", ".join(map(str, labels))
            yield Violation(
                ("output", "label_map", raw_value), f"maps to {text!r}, which is not one of output.labels", hint
            )


# --- model ---------------------------------------------------------------------------------------


@rule
def quantization_needs_lora(data: dict[str, Any]) -> Iterator[Violation]:
    """Quantization (`quantization.bits`) with `adapter.type: none`: quantized weights cannot be
    trained, so a quantized model is only fine-tuned through a LoRA adapter."""
    bits = _get(data, ("quantization", "bits"), int)
    if bits is not None and _get(data, ("adapter", "type"), str) == "none":
        yield Violation(
            ("quantization", "bits"),
            f"{bits}-bit quantization needs a LoRA adapter (quantized weights cannot be trained)",
            "set adapter.type: lora, or quantization.bits: null for full fine-tuning",
        )


# --- prompt --------------------------------------------------------------------------------------


@rule
def template_parses(data: dict[str, Any]) -> Iterator[Violation]:
    """A prompt template that is not plain `{column}` placeholders: unclosed braces, attribute access
    or indexing (`str.format` would let a template reach into Python objects)."""
    template = _get(data, ("prompt", "template"), str)
    if template is None:
        return
    try:
        parse_template(template)
    except TemplateError as exc:
        yield Violation(("prompt", "template"), f"{exc.message} (at character {exc.offset + 1})", exc.hint)


@rule
def template_uses_a_column(data: dict[str, Any]) -> Iterator[Violation]:
    """A template with no placeholder: every prompt would be the same text, so the model could not
    learn anything from the rows."""
    columns = _template_columns(data)
    if columns is not None and not columns:
        yield Violation(("prompt", "template"), "the template uses no column", "add a {column} placeholder")


@rule
def template_hides_answer(data: dict[str, Any]) -> Iterator[Violation]:
    """A template that shows the output column: the model would be trained and scored on copying the
    answer from its own prompt."""
    columns = _template_columns(data) or ()
    out_column = _get(data, ("output", "column"), str)
    if out_column and out_column in columns:
        yield Violation(
            ("prompt", "template"),
            f"the template shows the answer column {{{out_column}}} to the model",
            "remove it from the template; the answer follows the prompt",
        )


@rule
def examples_fill_template(data: dict[str, Any]) -> Iterator[Violation]:
    """A fixed example (`prompt.examples`) without every template column and the output column: it
    is rendered with the template and followed by its answer, so it needs them all."""
    columns = _template_columns(data)
    if columns is None:
        return
    out_column = _get(data, ("output", "column"), str)
    examples = _get(data, ("prompt", "examples"), list) or []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            continue
        needed = [c for c in (*columns, out_column) if c and c not in example]
        if needed:
            yield Violation(
                ("prompt", "examples", i),
                "example lacks " + ", ".join(needed),
                "give every template column and the output column",
            )


@rule
def examples_or_retrieval(data: dict[str, Any]) -> Iterator[Violation]:
    """Fixed examples together with retrieved ones (`prompt.retrieval.k` above 0): the prompt takes
    one source of in-context examples, and which would win is not obvious."""
    k = _get(data, ("prompt", "retrieval", "k"), int)
    if k and _get(data, ("prompt", "examples"), list):
        yield Violation(
            ("prompt", "retrieval", "k"),
            "both fixed examples and retrieved ones are given",
            "use prompt.examples or prompt.retrieval, not both",
        )


# The words `prompt.chat_template` takes besides a template file, and the endings a file must have.
CHAT_TEMPLATE_WORDS = ("auto", "none", "tokenizer")
CHAT_TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2")


@rule
def chat_template_is_known(data: dict[str, Any]) -> Iterator[Violation]:
    """A `prompt.chat_template` that is neither auto, none, tokenizer nor a Jinja file name: a
    misspelt word would otherwise be looked for as a file only when the data is tokenized."""
    value = _get(data, ("prompt", "chat_template"), str)
    if value is None or value in CHAT_TEMPLATE_WORDS or value.endswith(CHAT_TEMPLATE_SUFFIXES):
        return
    hint = did_you_mean(value, list(CHAT_TEMPLATE_WORDS)) or (
        "use auto, none, tokenizer, or a template file ending in " + ", ".join(CHAT_TEMPLATE_SUFFIXES)
    )
    yield Violation(("prompt", "chat_template"), f"{value!r} is neither auto, none, tokenizer nor a .jinja file", hint)


@rule
def system_needs_chat_template(data: dict[str, Any]) -> Iterator[Violation]:
    """`prompt.system` with `prompt.chat_template: none`: the system message is a turn of a chat
    template, so raw text has nowhere to put it (write it into the template instead)."""
    system = _get(data, ("prompt", "system"), str)
    if system is not None and _get(data, ("prompt", "chat_template"), str) == "none":
        yield Violation(
            ("prompt", "system"),
            "a system message needs a chat template (prompt.chat_template is none)",
            "set prompt.chat_template: auto (or tokenizer), or write the text into prompt.template",
        )


# --- data ----------------------------------------------------------------------------------------


@rule
def evaluation_split_exists(data: dict[str, Any]) -> Iterator[Violation]:
    """An evaluation split that would be empty: the source has no such split
    (`data.splits.<split>: null`) and none is carved from train (its fraction is 0)."""
    eval_split = _get(data, ("data", "evaluation_split"), str)
    if eval_split not in ("validation", "test"):
        return
    source = _get(data, ("data", "splits", eval_split), str)
    fraction = _get(data, ("data", "split", f"{eval_split}_fraction"), (int, float))
    if source is None and fraction == 0 and _get(data, ("data", "split", "type"), str) == "hash":
        yield Violation(
            ("data", "evaluation_split"),
            f"the evaluation split {eval_split!r} does not exist: the source has none and data.split.{eval_split}_fraction is 0",
            f"name its source in data.splits.{eval_split} or set data.split.{eval_split}_fraction above 0",
        )


# --- evaluation and training ---------------------------------------------------------------------


@rule
def rank_mode_needs_category_output(data: dict[str, Any]) -> Iterator[Violation]:
    """`evaluation.mode: rank` on a text output: rank mode scores each label's likelihood, so it
    needs a label set to rank."""
    if _get(data, ("evaluation", "mode"), str) == "rank" and _get(data, ("output", "type"), str) != "category":
        yield Violation(
            ("evaluation", "mode"),
            "rank mode scores labels, so it needs a category output",
            "set output.type: category or evaluation.mode: generate",
        )


@rule
def label_metric_needs_category_output(data: dict[str, Any]) -> Iterator[Violation]:
    """A label metric (accuracy, label_match, macro_f1) on a text output: these compare predictions
    with a declared label set, which a text output has not got."""
    metric = _get(data, ("evaluation", "metric"), str)
    if metric in LABEL_METRICS and _get(data, ("output", "type"), str) == "text":
        yield Violation(
            ("evaluation", "metric"),
            f"{metric} compares labels, so it needs a category output",
            "set output.type: category, or use exact_match or rouge_l",
        )


@rule
def paged_optimizer_needs_cuda(data: dict[str, Any]) -> Iterator[Violation]:
    """`paged_adamw_8bit` or `paged_adamw_32bit` with `trainer.device: cpu`: the bitsandbytes paged
    optimizers run on CUDA only, so training would fail at its first step instead of now."""
    optimizer = _get(data, ("trainer", "optimizer", "type"), str)
    if optimizer in ("paged_adamw_8bit", "paged_adamw_32bit") and _get(data, ("trainer", "device"), str) == "cpu":
        yield Violation(("trainer", "optimizer", "type"), f"{optimizer} needs a CUDA GPU", "use adamw on the CPU")


# --- serving: what vLLM and LoRAX accept (recipe/serving.py) ---------------------------------------

# Where a finding about an adapter setting (adapter_config.json's key) is reported in a recipe.
_SETTING_PATHS: dict[str, KeyPath] = {
    "r": ("adapter", "r"),
    "bias": ("adapter", "bias"),
    "target_modules": ("adapter", "target_modules"),
}


def serving_findings(data: dict[str, Any]) -> list[Finding]:
    """What the servers in `serving.targets` would refuse or run slower with the adapter of a
    recipe (defaults filled in); nothing for full fine-tuning or `serving.targets: []`."""
    targets = _get(data, ("serving", "targets"), list)
    if _get(data, ("adapter", "type"), str) != "lora" or not targets:
        return []
    modules = _get(data, ("adapter", "target_modules"), list)
    return check_adapter(
        r=_get(data, ("adapter", "r"), int),
        target_modules=None if modules is None else [m for m in modules if isinstance(m, str)],
        bias=_get(data, ("adapter", "bias"), str),
        # the hub model a GGUF or local base was made from tells its architecture best
        base_model=_get(data, ("model_parameters", "hub_id"), str) or _get(data, ("base_model",), str),
        targets=[t for t in targets if isinstance(t, str)],
    )


def _finding_path(data: dict[str, Any], finding: Finding) -> KeyPath:
    """The recipe key a finding is reported at: the first module it names, when it names some."""
    path = _SETTING_PATHS.get(finding.setting, ("adapter",))
    modules = _get(data, path, list) or []
    if finding.modules and finding.modules[0] in modules:
        return (*path, modules.index(finding.modules[0]))
    return path


def _serving_errors(data: dict[str, Any], code: str) -> Iterator[Violation]:
    for f in serving_findings(data):
        if f.code == code and f.severity == "error":
            yield Violation(_finding_path(data, f), f.message, f"{f.fix}, or leave {f.server} out of serving.targets")


def serving_notices(raw: Any, locate: Locate) -> list[Notice]:
    """The serving warnings and notes of a valid recipe, each placed at the key it is about."""
    if not isinstance(raw, dict):
        return []
    data = fill_defaults(raw)
    notices = []
    for f in serving_findings(data):
        if f.severity != "error":
            path = _finding_path(data, f)
            notices.append(Notice(locate(path, False), dotted(path), f.message, f.fix, severity=f.severity))
    return notices


@rule
def vllm_serves_the_rank(data: dict[str, Any]) -> Iterator[Violation]:
    """An adapter rank above 512 with vllm in `serving.targets`: vLLM's largest --max-lora-rank is
    512, so no flag makes it load the adapter (ranks up to 512 only need the flag: a warning)."""
    yield from _serving_errors(data, "vllm.rank_above_max")


@rule
def vllm_serves_without_bias(data: dict[str, Any]) -> Iterator[Violation]:
    """`adapter.bias` other than none with vllm in `serving.targets`: vLLM refuses adapters that
    train biases (current releases have no flag for them)."""
    yield from _serving_errors(data, "vllm.bias")


@rule
def vllm_serves_the_target_modules(data: dict[str, Any]) -> Iterator[Violation]:
    """A target module vLLM has no LoRA for on the base model's architecture (mostly a typo), with
    vllm in `serving.targets`: vLLM refuses the whole adapter."""
    yield from _serving_errors(data, "vllm.unknown_modules")


@rule
def lorax_serves_the_target_modules(data: dict[str, Any]) -> Iterator[Violation]:
    """A target module LoRAX does not serve on the base model's architecture (embed_tokens; lm_head
    on Gemma), with lorax in `serving.targets`: LoRAX drops it with only a log warning, so it would
    serve another adapter than the one trained and scored."""
    yield from _serving_errors(data, "lorax.dropped_modules")


# --- data sources (checked last) -----------------------------------------------------------------


@rule
def splits_have_distinct_sources(data: dict[str, Any]) -> Iterator[Violation]:
    """Two of train, validation and test read from the same source split: the model would be
    evaluated on rows it was trained on, or validated on its test rows."""
    splits = ("train", "validation", "test")
    names = _get(data, ("data", "splits"), dict) or {}
    for split in splits:
        name = names.get(split)
        others = [s for s in splits if s != split and names.get(s) == name]
        if name is not None and others and split < others[0]:
            yield Violation(
                ("data", "splits", others[0]),
                f"{split} and {others[0]} read the same source split {name!r}",
                "give each split its own source, or null to carve it",
            )
