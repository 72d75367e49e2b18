"""Prompt templates: `{column}` placeholders and `{{`/`}}` escapes, nothing more.

Python's `str.format` would let a template reach attributes and items (`{row.__class__}`,
`{x[0]}`) and run format specs; a recipe is data from a file, so we parse templates ourselves and
accept only plain column names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class TemplateError(ValueError):
    """A template mistake; `offset` is the character position in the template."""

    def __init__(self, message: str, offset: int, hint: str):
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint


@dataclass(frozen=True)
class Field:
    column: str
    offset: int


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[str | Field, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the template reads, each once, in order of first use."""
        seen: dict[str, None] = {}
        for part in self.parts:
            if isinstance(part, Field):
                seen.setdefault(part.column)
        return tuple(seen)

    def render(self, row: Mapping[str, Any]) -> str:
        return "".join(part if isinstance(part, str) else render_value(row[part.column]) for part in self.parts)


def render_value(value: Any) -> str:
    """How a cell appears in a prompt: text as is, lists of plain values joined by spaces (token
    lists such as CoNLL's become the sentence), anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple) and all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
    ):
        return " ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=_plain)


def _plain(value: Any) -> Any:
    """JSON for the read-only mappings a frozen recipe holds (few-shot example cells)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot show a {type(value).__name__} in a prompt")


_FORBIDDEN = {
    ".": ("attribute access is not allowed", "placeholders are plain column names"),
    "[": ("indexing is not allowed", "placeholders are plain column names"),
    "]": ("indexing is not allowed", "placeholders are plain column names"),
    ":": ("format specs are not allowed", "placeholders are plain column names"),
    "!": ("conversions are not allowed", "placeholders are plain column names"),
}


def parse_template(text: str) -> Template:
    """Split `text` into literal text and fields. Raises `TemplateError` at the first mistake."""
    parts: list[str | Field] = []
    literal: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "{" and text.startswith("{{", i):
            literal.append("{")
            i += 2
        elif ch == "}" and text.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "}":
            raise TemplateError("a lone '}'", i, "write '}}' for a literal brace")
        elif ch == "{":
            end = text.find("}", i + 1)
            nested = text.find("{", i + 1)
            if end < 0 or (0 <= nested < end):
                raise TemplateError("a '{' that is not closed", i, "write '{{' for a literal brace")
            name = text[i + 1 : end]
            snippet = text[i : end + 1]
            if not name.strip():
                raise TemplateError(f"empty placeholder {snippet}", i, "put a column name inside the braces")
            for bad, (message, hint) in _FORBIDDEN.items():
                if bad in name:
                    raise TemplateError(f"{snippet}: {message}", i, hint)
            if name != name.strip():
                raise TemplateError(f"{snippet}: spaces around the column name", i, f"write {{{name.strip()}}}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Field(name, i))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append("".join(literal))
    return Template(text, tuple(parts))
