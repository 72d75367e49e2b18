"""Check a recipe mapping against its JSON Schema, and say each error the way a person would.

Every problem becomes an `Issue` with the key path, a plain message and a hint; the caller decides
where each path was written (YAML line, or a `--set` option). The cross-field rules a schema cannot
say are in `rules.py`.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Collection, Iterator
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


def _got(value: Any) -> str:
    """What a wrong value is, said once: `text 'four'`, `a number 8.5`, `a list`, `null`, `true`."""
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return _show(value)
    if isinstance(value, int):
        return f"an integer {_show(value)}"
    if isinstance(value, float):
        return f"a number {_show(value)}"
    return f"text {_show(value)}"


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


def _under(path: KeyPath, skip: Collection[KeyPath]) -> bool:
    """Whether `path` is one of `skip` or inside one of them."""
    return any(path[: len(s)] == s for s in skip)


def _schema_issue(error: ValidationError, locate: Locate, skip: Collection[KeyPath]) -> Iterator[Issue]:
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
        missing = [k for k in expected if k not in value and not _under((*path, k), skip)]
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
        message = f"expected {_allowed(expected)}, got {_got(value)}"
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


def schema_issues(data: Any, locate: Locate, skip: Collection[KeyPath] = ()) -> list[Issue]:
    """Every schema violation in `data`, one issue per offending key; none at or under the paths
    in `skip` (values already reported and dropped, such as a refused tag or a NaN)."""
    best: dict[str, tuple[int, ValidationError]] = {}
    extra: list[ValidationError] = []
    for error in validator().iter_errors(data):
        kw = str(error.validator)
        if kw != "required" and _under(tuple(error.absolute_path), skip):
            continue
        if kw in ("additionalProperties", "required"):
            extra.append(error)
            continue
        key = dotted(tuple(error.absolute_path))
        rank = _PRIORITY.index(kw) if kw in _PRIORITY else len(_PRIORITY)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, error)
    issues: list[Issue] = []
    for error in [*extra, *(e for _, e in best.values())]:
        issues.extend(_schema_issue(error, locate, skip))
    return issues


# The largest integer a recipe may hold: what a 64-bit integer holds, and what torch, NumPy and
# every float conversion downstream can take (a bigger one can only be a mistake).
MAX_INTEGER = 2**63 - 1


def _number_problem(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        written = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
        return f"{written} is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        digits = len(str(abs(value)))
        sign = "" if value > 0 else " negative"
        return f"a {digits}-digit{sign} integer is too large (beyond 64 bits: at most {MAX_INTEGER:,} either way)"
    return None


def unusable_numbers(data: Any, locate: Locate) -> dict[KeyPath, Issue]:
    """Every number no setting can take, wherever it is: NaN, infinity (also what `1e999` reads
    as) and integers beyond 64 bits. JSON Schema lets NaN through every bound (NaN compares false
    with everything), so they are refused here, once for the whole document, before the schema."""
    found: dict[KeyPath, Issue] = {}
    stack: list[tuple[KeyPath, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in enumerate(value))
        else:
            problem = _number_problem(value)
            if problem is not None:
                example = _example(path)
                hint = "NaN and infinity are not allowed" if "finite" in problem else "write a smaller number"
                found[path] = Issue(
                    locate(path, False), dotted(path), problem, f"{hint}; {example}" if example else hint
                )
    return found
