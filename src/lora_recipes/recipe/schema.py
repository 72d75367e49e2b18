"""The recipe JSON Schema: loading it, validating against it, and filling its defaults.

`recipe.schema.json` beside this module is the contract and the only place defaults are written
down; the repository's `schemas/recipe.schema.json` (for editors) is a copy that `make docs` writes.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_FILE = "recipe.schema.json"


@functools.cache
def schema_text() -> str:
    return resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


@functools.cache
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


@functools.cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def subschema(path: tuple[str | int, ...]) -> dict[str, Any] | None:
    """The schema of the value at `path` (object properties only), or None if there is none."""
    node: dict[str, Any] = load_schema()
    for part in path:
        if isinstance(part, int):
            items = node.get("items")
            if not isinstance(items, dict):
                return None
            node = items
            continue
        props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
    return node


def fill_defaults(data: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of `data` with every missing property that has a default filled in, recursively.

    Objects that are present (or defaulted to `{}`) are filled in turn, so `trainer: {}` becomes
    the full trainer section. Values of the wrong type are left alone for validation to report.
    """
    out = copy.deepcopy(data)  # once: the walk below fills the copy in place
    _fill_in_place(out, load_schema() if schema is None else schema)
    return out


def _fill_in_place(out: dict[str, Any], schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    for name, sub in properties.items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])  # never share the schema's own objects
        if isinstance(out.get(name), dict) and ("properties" in sub or "additionalProperties" in sub):
            _fill_in_place(out[name], sub)
    entry = schema.get("additionalProperties")
    if isinstance(entry, dict) and "properties" in entry:  # a mapping of user-named entries
        for key, value in out.items():
            if key not in properties and isinstance(value, dict):
                _fill_in_place(value, entry)
