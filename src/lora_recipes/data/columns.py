"""Derived columns (`data.columns`): reshape source fields before prompting.

Each entry makes (or replaces) one column from others, in recipe order, so later entries may read
earlier ones. The ops are small pure functions of one row; a row they cannot handle raises
`ColumnProblem`, which the pipeline turns into a message naming the file, row and recipe line.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

from lora_recipes.recipe.template import render_value
from lora_recipes.recipe.types import ColumnSpec


class ColumnProblem(ValueError):
    """A row that an op cannot handle; `column` is the source column at fault."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column
        self.message = message


_MISSING = object()


def lookup(row: Mapping[str, Any], field: str) -> Any:
    """The value at `field`: a column name, or a dotted path into nested fields and list items
    (`sql.human_readable`, `answers.text.0`). A column whose name contains dots wins."""
    if field in row:
        return row[field]
    node: Any = row
    walked: list[str] = []
    for part in field.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit():
            node = node[int(part)] if int(part) < len(node) else _MISSING
        else:
            node = _MISSING
        if node is _MISSING:
            at = ".".join(walked) or "the row"
            raise ColumnProblem(field, f"{at} has no field {part!r}")
        walked.append(part)
    return node


def has_field(row: Mapping[str, Any], field: str) -> bool:
    try:
        lookup(row, field)
    except ColumnProblem:
        return False
    return True


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ColumnProblem(field, f"expected a list, got {type(value).__name__} {render_value(value)[:60]!r}")
    return list(value)


def _copy(row: Mapping[str, Any], spec: ColumnSpec) -> Any:
    return lookup(row, spec.from_)


def _join(row: Mapping[str, Any], spec: ColumnSpec) -> Any:
    value = lookup(row, spec.from_)
    if value is None:
        return None
    return spec.separator.join(render_value(v) for v in _list(value, spec.from_))


def letters(n: int) -> list[str]:
    if n > len(string.ascii_uppercase):
        raise ColumnProblem("", f"{n} options are more than the 26 letters; use markers: numbers")
    return list(string.ascii_uppercase[:n])


def _enumerate(row: Mapping[str, Any], spec: ColumnSpec) -> Any:
    options = _list(lookup(row, spec.from_), spec.from_)
    if spec.markers == "letters":
        try:
            markers = letters(len(options))
        except ColumnProblem as exc:
            raise ColumnProblem(spec.from_, exc.message) from None
    elif spec.markers == "numbers":
        markers = [str(i) for i in range(1, len(options) + 1)]
    else:
        markers = [render_value(m) for m in _list(lookup(row, spec.markers), spec.markers)]
        if len(markers) != len(options):
            raise ColumnProblem(spec.markers, f"{len(markers)} markers for {len(options)} options in {spec.from_!r}")
    return spec.separator.join(f"{m}. {render_value(o)}" for m, o in zip(markers, options, strict=True))


def position(value: Any, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ColumnProblem(field, f"{render_value(value)!r} is not a position (an integer or a numeric string)")


def _index(row: Mapping[str, Any], spec: ColumnSpec) -> Any:
    assert spec.index is not None  # checked before any row is read
    items = _list(lookup(row, spec.from_), spec.from_)
    at = position(lookup(row, spec.index), spec.index)
    if not 0 <= at < len(items):
        raise ColumnProblem(spec.index, f"position {at} is outside the {len(items)} items of {spec.from_!r}")
    return items[at]


def _entities(row: Mapping[str, Any], spec: ColumnSpec) -> Any:
    assert spec.tags is not None  # checked before any row is read
    tokens = _list(lookup(row, spec.from_), spec.from_)
    tags = _list(lookup(row, spec.tags), spec.tags)
    if len(tags) != len(tokens):
        raise ColumnProblem(spec.tags, f"{len(tags)} tags for {len(tokens)} tokens in {spec.from_!r}")
    names = [tag_name(t, spec) for t in tags]
    found = iob_spans(tokens, names)
    if spec.entity_types:
        return {key: found.get(kind, []) for kind, key in spec.entity_types.items()}
    return {kind: found[kind] for kind in sorted(found)}


def tag_name(tag: Any, spec: ColumnSpec) -> str:
    if isinstance(tag, str):
        return tag
    if isinstance(tag, int) and not isinstance(tag, bool):
        if not spec.tag_names:
            raise ColumnProblem(spec.tags or "", f"tag {tag} is a number, but tag_names does not name the numbers")
        if not 0 <= tag < len(spec.tag_names):
            raise ColumnProblem(spec.tags or "", f"tag id {tag} is outside tag_names ({len(spec.tag_names)} names)")
        return spec.tag_names[tag]
    raise ColumnProblem(spec.tags or "", f"{tag!r} is not a tag")


def iob_spans(tokens: list[Any], tags: list[str]) -> dict[str, list[str]]:
    """Entity texts per type from IOB2 tags. An I- tag that does not continue an entity of its type
    starts one (the IOB1 reading), so slightly malformed data still yields every entity."""
    found: dict[str, list[str]] = {}
    kind: str | None = None
    words: list[str] = []

    def close() -> None:
        if kind is not None:
            found.setdefault(kind, []).append(" ".join(words))

    for token, tag in zip(tokens, tags, strict=True):
        if tag == "O":
            close()
            kind, words = None, []
            continue
        word = token if isinstance(token, str) else render_value(token)
        prefix, _, tag_kind = tag.partition("-")
        if prefix == "I" and tag_kind == kind:
            words.append(word)
            continue
        close()
        if prefix in ("B", "I") and tag_kind:
            kind, words = tag_kind, [word]
        else:
            kind, words = None, []
    close()
    return found


def _round(row: Mapping[str, Any], spec: ColumnSpec) -> Any:
    value = lookup(row, spec.from_)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ColumnProblem(spec.from_, f"{render_value(value)[:60]!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ColumnProblem(spec.from_, f"{str(value)[:60]!r} is not a number") from None
    return round(number) if spec.digits == 0 else round(number, spec.digits)


OPS: dict[str, Callable[[Mapping[str, Any], ColumnSpec], Any]] = {
    "copy": _copy,
    "join": _join,
    "enumerate": _enumerate,
    "index": _index,
    "entities": _entities,
    "round": _round,
}

# The fields of a spec that name columns the op reads, by op.
READS = {"index": ("from_", "index"), "entities": ("from_", "tags")}


def columns_read(spec: ColumnSpec) -> list[str]:
    names = [getattr(spec, f) for f in READS.get(spec.op, ("from_",))]
    if spec.op == "enumerate" and spec.markers not in ("letters", "numbers"):
        names.append(spec.markers)
    return [n for n in names if n]


def spec_problem(spec: ColumnSpec) -> tuple[str, str] | None:
    """A spec mistake no row can fix: (key, message)."""
    if spec.op == "index" and spec.index is None:
        return "index", "op index needs `index`: the column holding the position"
    if spec.op == "entities" and spec.tags is None:
        return "tags", "op entities needs `tags`: the column of IOB tags"
    return None
