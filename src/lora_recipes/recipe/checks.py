"""Check a recipe mapping: JSON Schema errors and the cross-field rules a schema cannot say.

Every problem becomes an `Issue` with the key path, a plain message and a hint; the caller decides
where each path was written (YAML line, or a `--set` option).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator
from typing import Any

from jsonschema.exceptions import ValidationError

from lora_recipes.errors import Issue, Location
from lora_recipes.recipe.schema import fill_defaults, subschema, validator
from lora_recipes.recipe.template import TemplateError, parse_template
from lora_recipes.recipe.yamlio import Path, dotted

Locate = Callable[[Path, bool], Location]

# When one value breaks several keywords, report the most telling one only.
_PRIORITY = ["type", "anyOf", "enum", "const", "required", "additionalProperties"]

_TYPE_NAMES = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    return repr(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def _summary(description: str) -> str:
    """The first clause of a schema description, for hints: 'the model to fine-tune'."""
    cut = min((i for i in (description.find(s) for s in (". ", ": ", "; ")) if i >= 0), default=len(description))
    text = description[:cut].rstrip(".")
    return text[:1].lower() + text[1:]


def _example(path: Path) -> str | None:
    sub = subschema(path)
    if sub is not None and "default" in sub and sub["default"] not in (None, [], {}):
        return f"e.g. {json.dumps(sub['default'])}"
    return None


def _allowed(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_NAMES.get(t, t) for t in names)


def _schema_issue(error: ValidationError, locate: Locate) -> Iterator[Issue]:
    path: Path = tuple(error.absolute_path)
    where = dotted(path)
    kw = error.validator
    sch = error.schema if isinstance(error.schema, dict) else {}
    value: Any = error.instance
    expected: Any = error.validator_value
    hint: str | None
    if kw == "additionalProperties":
        allowed = sorted(sch.get("properties", {}))
        for key in sorted(set(value) - set(allowed)):
            key_path = (*path, key)
            hint = _did_you_mean(key, allowed) or (
                "allowed here: " + ", ".join(allowed) if allowed else "this mapping takes no keys"
            )
            yield Issue(locate(key_path, True), dotted(key_path), "unknown key", hint)
        return
    if kw == "required":
        missing = [k for k in expected if k not in value]
        for key in missing:
            sub = subschema((*path, key))
            summary = _summary(sub.get("description", "")) if sub else ""
            yield Issue(
                locate(path, True),
                where or "(top level)",
                f"missing required key {key!r}",
                f"add {key}: {summary}" if summary else f"add {key}",
            )
        return
    if kw == "type":
        message = f"expected {_allowed(expected)}, got {_kind(value)} {_show(value)}"
        yield Issue(locate(path, False), where, message, _example(path))
        return
    if kw == "enum":
        options = [o for o in expected if o is not None]
        nullable = None in expected
        listed = ", ".join(str(o) for o in options) + (" or null" if nullable else "")
        hint = _did_you_mean(str(value), [str(o) for o in options]) if isinstance(value, str) else None
        yield Issue(locate(path, False), where, f"{_show(value)} is not one of {listed}", hint)
        return
    if kw == "const":
        yield Issue(locate(path, False), where, f"must be {json.dumps(expected)}, got {_show(value)}")
        return
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kw]
        yield Issue(locate(path, False), where, f"must be {op} {expected}, got {_show(value)}", _example(path))
        return
    if kw == "anyOf":
        options = []
        for option in expected:
            if option.get("type") == "string" and "pattern" in option:
                options.append("a percentile such as p95")
            elif option.get("type") == "integer" and "minimum" in option:
                options.append(f"an integer >= {option['minimum']}")
            else:
                options.append(_allowed(option.get("type", "value")))
        yield Issue(locate(path, False), where, f"expected {' or '.join(options)}, got {_show(value)}", _example(path))
        return
    if kw == "pattern":
        yield Issue(
            locate(path, False),
            where,
            f"{_show(value)} has the wrong form",
            _summary(sch.get("description") or "") or None,
        )
        return
    if kw in ("minItems", "maxItems"):
        n = expected
        if sch.get("minItems") == sch.get("maxItems"):
            message = f"needs exactly {n} items, got {len(value)}"
        elif kw == "minItems":
            message = f"needs at least {n} item{'s' if n != 1 else ''}, got {len(value)}"
        else:
            message = f"takes at most {n} items, got {len(value)}"
        yield Issue(locate(path, False), where, message, _example(path))
        return
    if kw == "minLength":
        yield Issue(locate(path, False), where, "must not be empty")
        return
    if kw == "maxLength":
        yield Issue(locate(path, False), where, f"is longer than {expected} characters")
        return
    if kw == "uniqueItems":
        yield Issue(locate(path, False), where, "lists the same item twice", "remove the repeat")
        return
    yield Issue(locate(path, False), where, error.message)


def schema_issues(data: Any, locate: Locate) -> list[Issue]:
    """Every schema violation in `data`, one issue per offending key."""
    best: dict[str, tuple[int, ValidationError]] = {}
    extra: list[ValidationError] = []
    for error in validator().iter_errors(data):
        kw = str(error.validator)
        if kw in ("additionalProperties", "required"):
            extra.append(error)
            continue
        key = dotted(tuple(error.absolute_path))
        rank = _PRIORITY.index(kw) if kw in _PRIORITY else len(_PRIORITY)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, error)
    issues: list[Issue] = []
    for error in [*extra, *(e for _, e in best.values())]:
        issues.extend(_schema_issue(error, locate))
    return issues


# --- cross-field rules ---------------------------------------------------------------------------


def _get(data: Any, path: Path, kind: type | tuple[type, ...]) -> Any:
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


# Metrics that compare a prediction with a declared label set.
LABEL_METRICS = {"accuracy", "label_match", "macro_f1"}


def rule_issues(raw: Any, locate: Locate) -> list[Issue]:
    """Rules across fields, checked on the recipe with defaults filled in."""
    if not isinstance(raw, dict):
        return []
    data = fill_defaults(raw)
    issues: list[Issue] = []

    def add(path: Path, message: str, hint: str | None = None, *, key: bool = False) -> None:
        issues.append(Issue(locate(path, key), dotted(path), message, hint))

    out_type = _get(data, ("output", "type"), str)
    labels = _get(data, ("output", "labels"), list) or []
    label_map = _get(data, ("output", "label_map"), dict) or {}
    out_column = _get(data, ("output", "column"), str)
    if out_type == "category" and not labels:
        add(("output",), "a category output needs its labels", "add output.labels: [label, ...]", key=True)
    if out_type == "text" and (labels or label_map):
        which = "labels" if labels else "label_map"
        add(("output", which), f"output.{which} is only used by category outputs", "set output.type: category")
    for raw_value, text in label_map.items():
        if labels and isinstance(text, str) and text not in labels:
            hint = _did_you_mean(text, [str(x) for x in labels]) or "allowed: " + ", ".join(map(str, labels))
            add(("output", "label_map", raw_value), f"maps to {text!r}, which is not one of output.labels", hint)

    bits = _get(data, ("quantization", "bits"), int)
    adapter = _get(data, ("adapter", "type"), str)
    if bits is not None and adapter == "none":
        add(
            ("quantization", "bits"),
            f"{bits}-bit quantization needs a LoRA adapter (quantized weights cannot be trained)",
            "set adapter.type: lora, or quantization.bits: null for full fine-tuning",
        )

    template = _get(data, ("prompt", "template"), str)
    if template is not None:
        try:
            columns = parse_template(template).columns
        except TemplateError as exc:
            add(("prompt", "template"), f"{exc.message} (at character {exc.offset + 1})", exc.hint)
        else:
            if not columns:
                add(("prompt", "template"), "the template uses no column", "add a {column} placeholder")
            if out_column and out_column in columns:
                add(
                    ("prompt", "template"),
                    f"the template shows the answer column {{{out_column}}} to the model",
                    "remove it from the template; the answer follows the prompt",
                )
            examples = _get(data, ("prompt", "examples"), list) or []
            for i, example in enumerate(examples):
                if not isinstance(example, dict):
                    continue
                needed = [c for c in (*columns, out_column) if c and c not in example]
                if needed:
                    add(
                        ("prompt", "examples", i),
                        "example lacks " + ", ".join(needed),
                        "give every template column and the output column",
                    )
    k = _get(data, ("prompt", "retrieval", "k"), int)
    if k and _get(data, ("prompt", "examples"), list):
        add(
            ("prompt", "retrieval", "k"),
            "both fixed examples and retrieved ones are given",
            "use prompt.examples or prompt.retrieval, not both",
        )

    eval_split = _get(data, ("data", "evaluation_split"), str)
    if eval_split in ("validation", "test"):
        source = _get(data, ("data", "splits", eval_split), str)
        fraction = _get(data, ("data", "split", f"{eval_split}_fraction"), (int, float))
        if source is None and fraction == 0 and _get(data, ("data", "split", "type"), str) == "hash":
            add(
                ("data", "evaluation_split"),
                f"the evaluation split {eval_split!r} does not exist: the source has none and data.split.{eval_split}_fraction is 0",
                f"name its source in data.splits.{eval_split} or set data.split.{eval_split}_fraction above 0",
            )

    metric = _get(data, ("evaluation", "metric"), str)
    mode = _get(data, ("evaluation", "mode"), str)
    if mode == "rank" and out_type != "category":
        add(
            ("evaluation", "mode"),
            "rank mode scores labels, so it needs a category output",
            "set output.type: category or evaluation.mode: generate",
        )
    if metric in LABEL_METRICS and out_type == "text":
        add(
            ("evaluation", "metric"),
            f"{metric} compares labels, so it needs a category output",
            "set output.type: category, or use exact_match or rouge_l",
        )

    optimizer = _get(data, ("trainer", "optimizer", "type"), str)
    device = _get(data, ("trainer", "device"), str)
    if optimizer == "paged_adamw_8bit" and device == "cpu":
        add(("trainer", "optimizer", "type"), "paged_adamw_8bit needs a CUDA GPU", "use adamw on the CPU")

    for split in ("train", "validation", "test"):
        names = _get(data, ("data", "splits"), dict) or {}
        name = names.get(split)
        others = [s for s in ("train", "validation", "test") if s != split and names.get(s) == name]
        if name is not None and others and split < others[0]:
            add(
                ("data", "splits", others[0]),
                f"{split} and {others[0]} read the same source split {name!r}",
                "give each split its own source, or null to carve it",
            )
    return issues
