"""The schema is the contract: well-formed, documented, defaults that validate, mirrored by config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from lora_recipes.recipe.schema import SCHEMA_FILE, fill_defaults, load_schema
from lora_recipes.recipe.types import dataclass_tree

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "src" / "lora_recipes" / "recipe" / "recipe.schema.json"  # the real file
REPOSITORY_COPY = ROOT / "schemas" / "recipe.schema.json"  # written from it by `make docs`


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property subschema, with its dotted path (`*` for user-named map entries)."""
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        yield here, sub
        yield from walk(sub, here)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in extra:
        yield from walk(extra, f"{path}.*")


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_the_package_loads_the_real_schema_file() -> None:
    import lora_recipes.recipe.schema as schema_module

    assert Path(schema_module.__file__).parent / SCHEMA_FILE == PACKAGED
    assert PACKAGED.is_file() and not PACKAGED.is_symlink()
    assert load_schema() == json.loads(PACKAGED.read_bytes())


def test_repository_schema_is_a_byte_for_byte_copy_of_the_packaged_schema() -> None:
    """schemas/recipe.schema.json (what recipes name for editors) is generated, never linked or edited."""
    assert PACKAGED.exists() and REPOSITORY_COPY.exists()
    assert not PACKAGED.is_symlink() and not REPOSITORY_COPY.is_symlink()
    assert not REPOSITORY_COPY.samefile(PACKAGED)  # not a hard link either: two files
    assert REPOSITORY_COPY.read_bytes() == PACKAGED.read_bytes(), (
        f"{REPOSITORY_COPY.relative_to(ROOT)} differs from {PACKAGED.relative_to(ROOT)}: run make docs"
    )


def test_every_property_has_a_type_and_a_description() -> None:
    missing = [p for p, sub in walk(load_schema()) if "description" not in sub or not ("type" in sub or "anyOf" in sub)]
    assert missing == []


def test_every_object_forbids_unknown_keys() -> None:
    def objects(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if node.get("type") == "object" and "properties" in node:
            yield path, node
        for name, sub in node.get("properties", {}).items():
            yield from objects(sub, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            yield from objects(node["additionalProperties"], f"{path}.*")

    loose = [p for p, node in objects(load_schema(), "") if node.get("additionalProperties") is not False]
    assert loose == []


@pytest.mark.parametrize("path", [p for p, sub in walk(load_schema()) if "default" in sub])
def test_default_validates_against_its_own_subschema(path: str) -> None:
    sub = dict(next(s for p, s in walk(load_schema()) if p == path))
    default = sub.pop("default")
    errors = list(Draft202012Validator(sub).iter_errors(default))
    assert errors == [], f"{path}: default {default!r} is invalid"


def test_filled_minimal_recipe_validates() -> None:
    minimal = {
        "version": 1,
        "base_model": "x/y",
        "prompt": {"template": "{a}"},
        "output": {"column": "b"},
        "data": {"dataset": "d", "columns": {"c": {"from": "a"}}},
    }
    filled = fill_defaults(minimal)
    assert list(Draft202012Validator(load_schema()).iter_errors(filled)) == []
    assert filled["data"]["columns"]["c"]["op"] == "copy"  # entries of user-named maps are filled too


def schema_tree(node: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, sub in node.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            tree[name] = schema_tree(sub)
        elif isinstance(sub.get("additionalProperties"), dict) and "properties" in sub["additionalProperties"]:
            tree[name] = {"*": schema_tree(sub["additionalProperties"])}
        else:
            tree[name] = None
    return tree


def test_typed_config_mirrors_the_schema() -> None:
    assert dataclass_tree() == schema_tree(load_schema())


def test_no_defaults_in_config_dataclasses() -> None:
    import dataclasses

    import lora_recipes.recipe.types as config

    with_defaults = [
        f"{cls.__name__}.{f.name}"
        for cls in vars(config).values()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls)
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert with_defaults == []
