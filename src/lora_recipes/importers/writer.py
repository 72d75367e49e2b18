"""Write an imported recipe: YAML in the schema's key order, the source's comments beside the keys
they were written for, the settings that could not be carried kept as comments, and nothing that
the recipe reader would read back differently.

    Conversion -> (--minimal: drop values equal to the schema's defaults) -> YAML text
               -> read back and compared (a mismatch falls back to quoting every string)
               -> validated by the recipe loader -> written atomically (never over a file
                  without --force)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes import __version__
from lora_recipes.atomic import write_text_atomic
from lora_recipes.errors import Issue, Notice, RecipeInvalid, UserError
from lora_recipes.importers.common import Comments, Conversion, Uncarried, source_text
from lora_recipes.recipe.loader import LoadedRecipe, load_recipe
from lora_recipes.recipe.schema import load_schema, subschema
from lora_recipes.recipe.yamlio import KeyPath, dotted, parse_yaml

INDENT = "  "
FLOW_WIDTH = 88  # a list of plain values is written on one line up to this width
# Text that every YAML reader reads back as the same string when written without quotes.
_PLAIN = re.compile(r"^(?:[A-Za-z_]|\.\.?/)[A-Za-z0-9_./+@-]*(?: [A-Za-z0-9_./+@-]+)*$")
_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "nan", "inf"}


@dataclass(frozen=True)
class ImportResult:
    """What an import produced: the recipe text, the recipe as loaded, and the warnings and notes
    about the source (each with its line)."""

    text: str
    loaded: LoadedRecipe
    notices: tuple[Notice, ...]
    carried: int
    uncarried: int


# --- --minimal ---------------------------------------------------------------------------------


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    if isinstance(value, int | float) and isinstance(default, int | float):
        return float(value) == float(default)
    return type(value) is type(default) and value == default


def drop_defaults(recipe: dict[str, Any], path: KeyPath = ()) -> dict[str, Any]:
    """`recipe` without the values equal to the schema's defaults (read from the schema), and
    without the sections left empty; required values, which have no default, stay."""
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        here = (*path, key)
        sub = subschema(here)
        if isinstance(value, dict) and sub is not None and "properties" in sub:
            kept = drop_defaults(value, here)
            if kept:
                out[key] = kept
            continue
        if sub is not None and "default" in sub and _same(value, sub["default"]):
            continue
        out[key] = value
    return out


# --- YAML text ----------------------------------------------------------------------------------


def _order(mapping: dict[str, Any], path: KeyPath) -> list[str]:
    """Keys in the schema's order (user-named entries, such as label_map keys, as written)."""
    sub = load_schema() if not path else subschema(path)
    known = list((sub or {}).get("properties", {}))
    return sorted(mapping, key=lambda k: (0, known.index(k)) if k in known else (1, 0))


def scalar(value: Any, quote: bool = False) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be written in a recipe")
        return repr(value)
    text = str(value)
    if not quote and _PLAIN.match(text) and text.lower() not in _WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def _key(key: str) -> str:
    return key if _PLAIN.match(key) and key.lower() not in _WORDS else json.dumps(key, ensure_ascii=False)


def _literal(text: str) -> str | None:
    """The block-literal indicator that writes `text` exactly, or None when quoting is safer."""
    if "\n" not in text or "\r" in text or not text.strip():
        return None
    if any(ord(c) < 32 and c not in "\n\t" for c in text) or text[0] in " \t" or "\ufeff" in text:
        return None
    if text.endswith("\n\n"):
        return None
    lines = text.rstrip("\n").split("\n")
    if any(line.endswith((" ", "\t")) for line in lines):
        return None
    return "|" if text.endswith("\n") else "|-"


def _comment(text: str) -> str:
    return "#" + text if text.startswith((" ", "\t")) or not text else "# " + text


class _Emitter:
    def __init__(self, conv: Conversion, quote: bool) -> None:
        self.conv = conv
        self.quote = quote
        # Each source key's comments go with the first recipe key made from it.
        self.comments: dict[KeyPath, Comments] = {}
        given: set[KeyPath] = set()
        for recipe_path, source_path in conv.origins.items():
            found = conv.source.comments.get(source_path)
            if found is not None and source_path not in given:
                self.comments[recipe_path] = found
                given.add(source_path)
        self.lines: list[str] = []

    def flow(self, value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(self.flow(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))}: {self.flow(v)}" for k, v in value.items()) + "}"
        return scalar(value, quote=True) if isinstance(value, str) else scalar(value)

    def mapping(self, mapping: dict[str, Any], path: KeyPath, depth: int) -> None:
        pad = INDENT * depth
        for key in _order(mapping, path):
            here = (*path, key)
            value = mapping[key]
            found = self.comments.get(here, Comments())
            self.lines += [pad + _comment(c) for c in found.above]
            after = f"  {_comment(found.after)}" if found.after is not None else ""
            head = f"{pad}{_key(key)}:"
            if isinstance(value, dict) and value:
                self.lines.append(head + after)
                self.mapping(value, here, depth + 1)
            elif isinstance(value, list) and value and not self._flowable(value, len(head)):
                self.lines.append(head + after)
                self.lines += [f"{pad}{INDENT}- {self.flow(v)}" for v in value]
            elif isinstance(value, str) and not self.quote and (indicator := _literal(value)):
                self.lines.append(f"{head} {indicator}{after}")
                self.lines += [f"{pad}{INDENT}{line}" if line else "" for line in value.rstrip("\n").split("\n")]
            elif isinstance(value, list | dict):
                self.lines.append(f"{head} {self.flow(value)}{after}")
            else:
                self.lines.append(f"{head} {scalar(value, self.quote)}{after}")
            if depth == 0:
                inside = isinstance(value, dict) and bool(value)
                self.uncarried([u for u in self.conv.uncarried if u.section == key], INDENT if inside else "")

    def _flowable(self, value: list[Any], width: int) -> bool:
        return all(not isinstance(v, list | dict) for v in value) and width + len(self.flow(value)) <= FLOW_WIDTH

    def uncarried(self, items: list[Uncarried], pad: str) -> None:
        if not items:
            return
        where = self.conv.source.path.name
        self.lines.append(f"{pad}# not carried from {where} (no equivalent in a recipe):")
        for item in items:
            found = self.conv.source.comments.get(item.path, Comments())
            self.lines += [f"{pad}#   #{c}" for c in found.above]
            text = source_text(self.conv.source, item.path)
            note = f"  #{found.after}" if found.after is not None else ""
            self.lines.append(f"{pad}#   {text}{note}")
            self.lines.append(f"{pad}#     line {self.conv.source.line(item.path)}: {item.why}")


def render(conv: Conversion, recipe: dict[str, Any], header: list[str], *, quote: bool = False) -> str:
    emitter = _Emitter(conv, quote)
    emitter.lines += [_comment(h) for h in header]
    emitter.mapping(recipe, (), 0)
    rest = [u for u in conv.uncarried if u.section not in recipe]
    if rest:
        emitter.lines.append("")
        emitter.uncarried(rest, "")
    return "\n".join(emitter.lines) + "\n"


def to_text(conv: Conversion, recipe: dict[str, Any], header: list[str]) -> str:
    """The recipe as YAML that reads back as exactly `recipe` (checked; strings are quoted when
    the plain form would not)."""
    for quote in (False, True):
        text = render(conv, recipe, header, quote=quote)
        if parse_yaml(text, "<import>").data == recipe:
            return text
    raise UserError("the recipe could not be written as YAML that reads back the same (a bug: please report it)")


# --- checking and writing -----------------------------------------------------------------------


def _source_issue(conv: Conversion, issue: Issue) -> Issue:
    """A recipe mistake reported at the source setting it came from, when there is one."""
    path = tuple(int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", issue.path) if p)
    for end in range(len(path), 0, -1):
        source = conv.origins.get(path[:end])
        if source is not None:
            message = issue.message if dotted(source) == issue.path else f"as {issue.path}, {issue.message}"
            return Issue(conv.source.at(source), dotted(source), message, issue.hint)
    return Issue(conv.source.at(()), "", f"the recipe's {issue.path}: {issue.message}", issue.hint)


def check(conv: Conversion, text: str, folder: Path) -> LoadedRecipe:
    """Load `text` as a recipe beside where it will be written (relative paths resolve the same);
    its mistakes are reported at the source settings they came from."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".import-", suffix=".yaml", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            return load_recipe(Path(name))
        except RecipeInvalid as exc:
            raise RecipeInvalid([_source_issue(conv, i) for i in exc.issues]) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def header_lines(conv: Conversion, command: str, carried: int) -> list[str]:
    lines = [
        f"Imported from {conv.source.path} by `lora-recipes import {command}` (lora-recipes {__version__}).",
        f"{carried} settings carried; {len(conv.uncarried)} not carried (kept as comments, each under its section); "
        f"{sum(n.severity == 'warning' for n in conv.notices)} warnings.",
    ]
    if conv.source.header:
        lines += ["", "The source's header:", *(f"  {h.strip()}" for h in conv.source.header)]
    return lines


def check_output(output: Path | None, force: bool) -> None:
    """Refuse to write over a file without `force`, or over a folder at all."""
    if output is None:
        return
    if output.is_dir():
        raise UserError(f"-o {output}: is a folder; name the recipe file to write")
    if output.exists() and not force:
        raise UserError(f"-o {output}: the file exists; give --force to replace it")


def finish(conv: Conversion, command: str, *, output: Path | None, minimal: bool, force: bool) -> ImportResult:
    """Render, check and (with `output`) write the recipe; `output` None prints nothing here."""
    check_output(output, force)
    recipe = drop_defaults(conv.recipe) if minimal else conv.recipe
    carried = len(set(conv.origins.values()))
    text = to_text(conv, recipe, header_lines(conv, command, carried))
    loaded = check(conv, text, (output.parent if output is not None else Path.cwd()))
    if output is not None:
        write_text_atomic(output, text)
    notices = sorted(conv.notices, key=lambda n: (n.location.line, n.location.col))
    return ImportResult(text, loaded, tuple(notices), carried, len(conv.uncarried))
