"""Load a recipe: read the YAML, apply `--set`/`--data` overrides, validate, fill defaults.

    raw mapping (positions kept) -> overrides -> schema + cross-field rules -> defaults -> Recipe

Every mistake on the way is collected and raised together as one `RecipeInvalid`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_recipes.errors import Issue, Location, RecipeInvalid, UserError
from lora_recipes.recipe.checks import schema_issues
from lora_recipes.recipe.rules import rule_issues
from lora_recipes.recipe.schema import fill_defaults
from lora_recipes.recipe.types import Recipe, build
from lora_recipes.recipe.yamlio import Document, KeyPath, dotted, parse_yaml

MAX_RECIPE_BYTES = 1_000_000

_KEY_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")


@dataclass(frozen=True)
class Override:
    """One `--set key.path=value`; `index` is its 1-based position among the --set options."""

    path: KeyPath
    value: Any
    text: str
    index: int


@dataclass
class Origins:
    """Where each key path was written: the recipe file or a command-line option."""

    doc: Document
    overridden: dict[KeyPath, Location] = field(default_factory=dict)

    def locate(self, path: KeyPath, key: bool = False) -> Location:
        for end in range(len(path), 0, -1):
            if path[:end] in self.overridden:
                return self.overridden[path[:end]]
        return self.doc.locate(path, key=key)


@dataclass(frozen=True)
class LoadedRecipe:
    """A valid recipe with what produced it."""

    path: Path
    recipe: Recipe
    resolved: dict[str, Any]
    from_command_line: frozenset[KeyPath]

    @property
    def name(self) -> str:
        return self.recipe.name or self.path.stem

    def local_path(self, path: tuple[str, ...], value: str) -> Path:
        """Resolve a path-like value: relative to the current directory when it came from the
        command line, else relative to the recipe file."""
        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        return p if path in self.from_command_line else self.path.parent / p


def parse_override(text: str, index: int) -> Override:
    """Parse `key.path=value`; the value is read with the recipe's YAML rules."""
    where = f"--set {text}"
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not _KEY_PATH.match(key):
        raise RecipeInvalid(
            [
                Issue(
                    Location("--set", index, 1),
                    key or text,
                    f"cannot read {where!r}",
                    "write --set key.path=value, e.g. --set trainer.learning_rate=1e-4",
                )
            ]
        )
    doc = parse_yaml(value_text, "--set", line=index, col_offset=len(text) - len(value_text))
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return Override(path, doc.data, text, index)


def _apply(data: dict[str, Any], override: Override, origins: Origins) -> Issue | None:
    node: Any = data
    location = Location("--set", override.index, 1)
    for depth, part in enumerate(override.path[:-1]):
        here = override.path[: depth + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return Issue(location, dotted(here), "no such list item to override", "set the whole list instead")
            node = node[part]
            continue
        if not isinstance(node, dict):
            return Issue(location, dotted(here[:-1]), "is not a mapping, so it has no key " + repr(part))
        if not isinstance(node.get(part), dict | list):
            node[part] = {}
        node = node[part]
    last = override.path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            return Issue(location, dotted(override.path), "no such list item to override", "set the whole list instead")
    elif not isinstance(node, dict):
        return Issue(location, dotted(override.path[:-1]), "is not a mapping")
    node[last] = override.value
    origins.overridden[override.path] = location
    return None


def read_recipe_text(path: Path) -> str:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a recipe file")
    data = path.read_bytes()
    if len(data) > MAX_RECIPE_BYTES:
        raise UserError(f"{path}: {len(data):,} bytes is too large for a recipe (at most {MAX_RECIPE_BYTES:,})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeInvalid(
            [
                Issue(
                    Location(str(path), line, 1),
                    "",
                    f"byte {data[exc.start]:#04x} is not UTF-8",
                    "save the file as UTF-8",
                )
            ]
        ) from None


def load_recipe(
    path: str | Path,
    overrides: Sequence[str] = (),
    data_path: str | None = None,
) -> LoadedRecipe:
    """Read, override, validate and resolve one recipe. Raises `RecipeInvalid` or `UserError`."""
    path = Path(path)
    text = read_recipe_text(path)
    issues: list[Issue] = []
    try:
        doc = parse_yaml(text, str(path))
    except RecipeInvalid as exc:
        issues.extend(exc.issues)
        doc = Document(str(path), None)
    parsed: list[Override] = []
    for i, item in enumerate(overrides, start=1):
        try:
            parsed.append(parse_override(item, i))
        except RecipeInvalid as exc:
            issues.extend(exc.issues)
    if issues:
        raise RecipeInvalid(issues)
    if doc.data is None:
        raise RecipeInvalid(
            [Issue(Location(str(path), 1, 1), "", "the recipe is empty", "start from recipes/quickstart.yaml")]
        )
    if not isinstance(doc.data, dict):
        raise RecipeInvalid([Issue(Location(str(path), 1, 1), "", "a recipe must be a mapping of keys to values")])

    data = copy.deepcopy(doc.data)
    origins = Origins(doc)
    for override in parsed:
        problem = _apply(data, override, origins)
        if problem:
            issues.append(problem)
    if data_path is not None:
        data.setdefault("data", {})
        if isinstance(data["data"], dict):
            data["data"]["dataset"] = data_path
            origins.overridden[("data", "dataset")] = Location("--data", 1, 1)

    issues.extend(schema_issues(data, origins.locate))
    issues.extend(rule_issues(data, origins.locate))
    if issues:
        raise RecipeInvalid(issues)
    resolved = fill_defaults(data)
    return LoadedRecipe(
        path=path,
        recipe=build(Recipe, resolved),
        resolved=resolved,
        from_command_line=frozenset(origins.overridden),
    )
