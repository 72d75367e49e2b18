"""What every importer shares: the source config read with positions and comments, and the
conversion record that says, for every setting of the source, what became of it.

An importer reads settings through `Conversion.take` (which marks them used) and writes recipe
values through `Conversion.put` (which remembers the source key, so the writer can carry that
key's comments over). Whatever it does not read is reported at the end by `Conversion.leftovers`
as a setting with no equivalent, so no setting of the source is ever dropped in silence: each one
is carried, reported as a warning with its line (and kept as a comment in the recipe), or is an
unset value (null) that says nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lora_recipes.errors import Issue, Location, Notice, RecipeInvalid
from lora_recipes.recipe.loader import read_recipe_text
from lora_recipes.recipe.schema import subschema
from lora_recipes.recipe.yamlio import Document, KeyPath, dotted, parse_yaml

__all__ = [
    "Comments",
    "Conversion",
    "SourceConfig",
    "Uncarried",
    "as_bool",
    "import_error",
    "read_source",
    "schema_default",
]


@dataclass(frozen=True)
class Comments:
    """The comment lines written just above a key (no blank line between) and the comment after it
    on its own line, without their `#`."""

    above: tuple[str, ...] = ()
    after: str | None = None


@dataclass
class SourceConfig:
    """A config file as read by the recipe reader: its data, the place of every key and value, and
    the comments around its keys."""

    path: Path
    doc: Document
    text: str
    comments: dict[KeyPath, Comments] = field(default_factory=dict)
    header: tuple[str, ...] = ()  # comment lines at the top of the file, before anything else

    @property
    def data(self) -> Any:
        return self.doc.data

    def at(self, path: KeyPath, *, key: bool = True) -> Location:
        return self.doc.locate(path, key=key)

    def line(self, path: KeyPath) -> int:
        return self.at(path).line


def read_source(path: Path) -> SourceConfig:
    """Read a config with the recipe reader (YAML 1.2, positions kept, duplicate keys and Python
    tags refused); its comments are found with PyYAML's scanner."""
    text = read_recipe_text(path)
    doc = parse_yaml(text, str(path))
    source = SourceConfig(path, doc, text)
    if doc.data is None:
        raise import_error(source, (), "the file is empty", "give a config file")
    if not isinstance(doc.data, dict):
        raise import_error(source, (), "a config must be a mapping of keys to values")
    source.comments, source.header = _comments(text, doc)
    return source


def import_error(source: SourceConfig, path: KeyPath, message: str, hint: str | None = None) -> RecipeInvalid:
    """The one error a config that cannot become a recipe gets, at the line of `path`."""
    return RecipeInvalid([Issue(source.at(path), dotted(path), message, hint)])


def _comment_spans(text: str) -> list[tuple[int, int, str]]:
    """(0-based line, column, text) of every comment: a `#` outside any token, at the start of a
    line or after whitespace."""
    covered: list[tuple[int, int]] = []
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        start, end = token.start_mark.index, token.end_mark.index
        if end > start:
            covered.append((start, end))
    covered.sort()
    found = []
    offset = 0
    spans = iter(covered)
    span = next(spans, None)
    for number, line in enumerate(text.splitlines(keepends=True)):
        for col, char in enumerate(line):
            if char != "#":
                continue
            index = offset + col
            while span is not None and span[1] <= index:
                span = next(spans, None)
            if span is not None and span[0] <= index < span[1]:
                continue
            if col == 0 or line[col - 1] in " \t":
                found.append((number, col, line[col + 1 :].rstrip("\r\n")))
                break
        offset += len(line)
    return found


def _comments(text: str, doc: Document) -> tuple[dict[KeyPath, Comments], tuple[str, ...]]:
    """Comments attached to the key they stand above or beside, and the file's header comment."""
    lines = text.splitlines()
    spans = _comment_spans(text)
    whole_line = {n: body for n, col, body in spans if not lines[n][:col].strip()}
    trailing = {n: body for n, col, body in spans if lines[n][:col].strip()}
    first_key: dict[int, KeyPath] = {}  # 0-based line -> the outermost key written on it
    for path, loc in sorted(doc.keys.items(), key=lambda kv: (kv[1].line, len(kv[0]), kv[1].col)):
        first_key.setdefault(loc.line - 1, path)
    out: dict[KeyPath, Comments] = {}
    for n, path in first_key.items():
        above = []
        k = n - 1
        while k >= 0 and k in whole_line:
            above.append(whole_line[k])
            k -= 1
        after = trailing.get(n)
        if above or after is not None:
            out[path] = Comments(tuple(reversed(above)), after)
    header: list[str] = []
    for n, line in enumerate(lines):
        if n in whole_line:
            header.append(whole_line[n])
        elif not line.strip():
            break
        else:
            return out, ()  # the comments run into the first key: they are that key's
    return out, tuple(header)


def as_bool(value: Any) -> bool | None:
    """A boolean setting, also when written the YAML 1.1 way (yes, no, on, off), which the recipe
    reader keeps as text; None when it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "on", "y", "true"):
        return True
    if isinstance(value, str) and value.lower() in ("no", "off", "n", "false"):
        return False
    return None


def schema_default(path: KeyPath) -> Any:
    """The recipe default at `path`, read from the schema (the one place defaults live)."""
    sub = subschema(path)
    if sub is None or "default" not in sub:
        raise KeyError(dotted(path))
    return sub["default"]


@dataclass(frozen=True)
class Uncarried:
    """A setting of the source with no equivalent: where it is, the recipe section it belongs
    with (None: the end of the recipe), and why, for the comment kept in the recipe."""

    path: KeyPath
    section: str | None
    why: str


@dataclass
class Conversion:
    """The recipe an importer builds and the record of what became of each source setting."""

    source: SourceConfig
    tool: str
    recipe: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, KeyPath] = field(default_factory=dict)  # recipe path -> source path
    used: set[KeyPath] = field(default_factory=set)
    notices: list[Notice] = field(default_factory=list)
    uncarried: list[Uncarried] = field(default_factory=list)

    # --- reading the source ----------------------------------------------------------------------

    def has(self, path: KeyPath) -> bool:
        return self._find(path)[0]

    def peek(self, path: KeyPath, default: Any = None) -> Any:
        found, value = self._find(path)
        return value if found else default

    def take(self, path: KeyPath, default: Any = None) -> Any:
        """The source value at `path` (or `default`), marked as used."""
        found, value = self._find(path)
        if found:
            self.used.add(path)
        return value if found else default

    def _find(self, path: KeyPath) -> tuple[bool, Any]:
        node = self.source.data
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    return False, None
            elif not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    # --- writing the recipe ----------------------------------------------------------------------

    def put(self, path: KeyPath, value: Any, source: KeyPath | None = None) -> None:
        """Set a recipe value; `source` is the source key it came from (its comments follow it)."""
        node = self.recipe
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = value
        if source is not None:
            self.origins.setdefault(path, source)

    def get(self, path: KeyPath, default: Any = None) -> Any:
        node: Any = self.recipe
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    # --- what could not be carried -----------------------------------------------------------

    def warn(self, path: KeyPath, message: str, hint: str | None = None, *, section: str | None = None) -> None:
        """A setting without an equivalent: a warning with its line, and a comment in the recipe."""
        self.used.add(path)
        self.notices.append(Notice(self.source.at(path), dotted(path), message, hint, "warning"))
        self.uncarried.append(Uncarried(path, section, message + (f" ({hint})" if hint else "")))

    def caution(self, path: KeyPath, message: str, hint: str | None = None) -> None:
        """A setting that was carried, but not exactly: a warning with its line."""
        self.notices.append(Notice(self.source.at(path), dotted(path), message, hint, "warning"))

    def note(self, message: str, hint: str | None = None, path: KeyPath = ()) -> None:
        """A default of the source tool that the recipe cannot reproduce (nothing was written)."""
        self.notices.append(Notice(self.source.at(path), dotted(path), message, hint, "note"))

    def leftovers(
        self,
        sections: Mapping[str, str | None],
        inert: dict[KeyPath, Any] | None = None,
        hints: dict[str, str] | None = None,
    ) -> None:
        """Report every setting no importer step read: null values say nothing and are skipped,
        and so are values listed in `inert` (the source's own default, which changes nothing).
        `sections` places a top-level source key's comment with a recipe section; `hints` (by
        dotted key, list positions left out) say what to do instead."""
        inert = inert or {}
        hints = hints or {}
        for path, value in self._unread(self.source.data, ()):
            if value is None or (path in inert and inert[path] == value):
                self.used.add(path)
                continue
            section = sections.get(str(path[0])) if path else None
            key = ".".join(str(p) for p in path if not isinstance(p, int))
            self.warn(path, f"{self.tool}'s {key} has no equivalent in a recipe", hints.get(key), section=section)

    def _unread(self, node: Any, path: KeyPath) -> Iterator[tuple[KeyPath, Any]]:
        if path and path in self.used:
            return
        if isinstance(node, dict) and node:
            for key, value in node.items():
                yield from self._unread(value, (*path, key))
        elif isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
            for i, item in enumerate(node):
                yield from self._unread(item, (*path, i))
        else:
            yield path, node


def source_text(source: SourceConfig, path: KeyPath) -> str:
    """`key: value` as one line, for the comment that keeps an uncarried setting in the recipe."""
    value: Any = source.data
    for part in path:
        value = value[part]
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False) if ("\n" in value or "#" in value) else value
    else:
        lines = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).splitlines()
        shown = " ".join(line for line in lines if line != "...")
    return f"{dotted(path)}: {shown}"
