"""Check a recipe mapping against its JSON Schema, and say each error the way a person would.

Every problem becomes an `Issue` with the key path, a plain message and a hint; the caller decides
where each path was written (YAML line, or a `--set` option). The cross-field rules a schema cannot
say are in `rules.py`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator
from typing import Any

from jsonschema.exceptions import ValidationError

from lora_recipes.errors import Issue, Location
from lora_recipes.recipe.schema import subschema, validator
from lora_recipes.recipe.yamlio import KeyPath, dotted

Locate = Callable[[KeyPath, bool], Location]

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


def did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else None


def _summary(description: str) -> str:
    """The first clause of a schema description, for hints: 'the model to fine-tune'."""
    cut = min((i for i in (description.find(s) for s in (". ", ": ", "; ")) if i >= 0), default=len(description))
    text = description[:cut].rstrip(".")
    return text[:1].lower() + text[1:]


def _example(path: KeyPath) -> str | None:
    sub = subschema(path)
    if sub is not None and "default" in sub and sub["default"] not in (None, [], {}):
        return f"e.g. {json.dumps(sub['default'])}"
    return None


def _allowed(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_NAMES.get(t, t) for t in names)


def _schema_issue(error: ValidationError, locate: Locate) -> Iterator[Issue]:
    path: KeyPath = tuple(error.absolute_path)
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
            hint = did_you_mean(key, allowed) or (
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
        hint = did_you_mean(str(value), [str(o) for o in options]) if isinstance(value, str) else None
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
