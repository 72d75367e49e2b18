"""docs/recipe-reference.md is generated from the schema and must never fall behind it."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gen_recipe_reference.py"
REFERENCE = ROOT / "docs" / "recipe-reference.md"
SCHEMA = ROOT / "schemas" / "recipe.schema.json"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_recipe_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return loaded


def properties(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section heading path, key, subschema) of every property, `<name>` for user-named entries."""
    for name, sub in node.get("properties", {}).items():
        yield path, name, sub
        here = f"{path}.{name}" if path else name
        yield from properties(sub, here)
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict) and "properties" in extra:
            yield from properties(extra, f"{here}.<name>")


def section_rows(text: str) -> dict[str, dict[str, list[str]]]:
    """The reference's tables: heading path -> key -> its cells."""
    tables: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(r"^#{2,6} (?:`(?P<path>[^`]+)`|Top level)$", line)
        if heading:
            current = heading["path"] or ""
            tables[current] = {}
        elif current is not None and line.startswith("| `"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            tables[current][cells[0].strip("`")] = cells
    return tables


def test_reference_is_current(gen: ModuleType, schema: dict[str, Any]) -> None:
    assert REFERENCE.read_text(encoding="utf-8") == gen.render(schema), (
        "docs/recipe-reference.md is stale: run python scripts/gen_recipe_reference.py"
    )


def test_every_property_is_listed_with_its_type_default_and_description(
    gen: ModuleType, schema: dict[str, Any]
) -> None:
    tables = section_rows(gen.render(schema))
    listed = 0
    for section, key, sub in properties(schema):
        row = tables[section][key]
        _, type_cell, default_cell, allowed_cell, description_cell = row
        assert type_cell, f"{section}.{key} has no type"
        assert sub["description"].split(". ")[0].replace("|", "\\|") in description_cell
        if "default" in sub and "properties" not in sub:
            assert default_cell == gen.code(sub["default"]).replace("|", "\\|"), f"{section}.{key}"
        for value in sub.get("enum", []):
            assert json.dumps(value) in allowed_cell, f"{section}.{key} does not list {value!r}"
        listed += 1
    assert listed > 100  # the schema has well over a hundred keys; a walk that finds few is broken


def test_required_keys_and_nested_sections_are_marked(gen: ModuleType, schema: dict[str, Any]) -> None:
    tables = section_rows(gen.render(schema))
    assert tables[""]["base_model"][2] == "required"
    assert tables["data"]["dataset"][2] == "required"
    assert tables["data.columns.<name>"]["from"][2] == "required"
    assert tables[""]["trainer"][2] == "see [`trainer`](#trainer)"
    assert tables["trainer"]["learning_rate_scheduler"][2].startswith("see [`trainer.learning_rate_scheduler`]")
    assert "<= `1`" in tables["trainer"]["learning_rate"][3]


def test_anchors_match_the_headings_they_point_to(gen: ModuleType, schema: dict[str, Any]) -> None:
    text = gen.render(schema)
    headings = {gen.anchor(m) for m in re.findall(r"^#{2,6} `([^`]+)`$", text, flags=re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= headings


def test_a_schema_change_makes_the_reference_stale(gen: ModuleType, schema: dict[str, Any], tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    output = tmp_path / "reference.md"
    schema_file.write_text(json.dumps(schema))
    assert gen.main(["--schema", str(schema_file), "--output", str(output), "--check"]) == 1  # missing file
    assert gen.main(["--schema", str(schema_file), "--output", str(output)]) == 0
    assert gen.main(["--schema", str(schema_file), "--output", str(output), "--check"]) == 0

    changed = copy.deepcopy(schema)
    changed["properties"]["trainer"]["properties"]["warmup_ratio_extra"] = {
        "description": "A key added after the reference was written.",
        "type": "number",
        "default": 0.5,
    }
    changed["properties"]["adapter"]["properties"]["r"]["default"] = 16
    schema_file.write_text(json.dumps(changed))
    before = output.read_text()
    assert gen.main(["--schema", str(schema_file), "--output", str(output), "--check"]) == 1
    assert output.read_text() == before  # --check writes nothing

    assert gen.main(["--schema", str(schema_file), "--output", str(output)]) == 0
    tables = section_rows(output.read_text())
    assert tables["trainer"]["warmup_ratio_extra"][2] == "`0.5`"
    assert tables["adapter"]["r"][2] == "`16`"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file behind
