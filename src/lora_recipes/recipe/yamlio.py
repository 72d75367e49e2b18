"""Read YAML the way recipes need it: positions kept, YAML 1.2 scalars, nothing dangerous.

PyYAML's composer gives us the node tree with line/column marks; we build plain Python values from
it ourselves so that we can
- remember where every key and value came from (for `FILE:LINE:COL` messages),
- resolve scalars by the YAML 1.2 core schema (`2e-4` is a number, `yes` and `no` are strings),
- refuse duplicate keys, Python-object tags and alias bombs with a clear message,
- compose without recursion, so that deep nesting is a message with its line, not a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from lora_recipes.errors import Issue, Location, RecipeInvalid

KeyPath = tuple[str | int, ...]

# A recipe is a few hundred nodes; anything past this is an alias bomb or not a recipe.
MAX_NODES = 100_000
# A recipe nests four or five levels deep; past this it is not a recipe (and deep nesting is how a
# small file makes a recursive reader run out of stack).
MAX_DEPTH = 64

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _Core12Resolver(BaseResolver):
    """Implicit tags of the YAML 1.2 core schema (PyYAML only knows YAML 1.1's)."""


_Core12Resolver.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Core12Resolver.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Core12Resolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
_Core12Resolver.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _PyEvents(Reader, Scanner, Parser, _Core12Resolver):
    """A pure-Python event parser with the YAML 1.2 resolver (used when LibYAML is missing)."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _Core12Resolver.__init__(self)


try:  # LibYAML's parser is about 5x faster; its events are the same Python objects.
    from yaml.cyaml import CParser  # type: ignore[attr-defined]

    class _CEvents(CParser, _Core12Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Core12Resolver.__init__(self)

    _Events: type = _CEvents
    _BYTE_OFFSETS = True  # LibYAML reports reader errors at a byte offset into the UTF-8 text
except ImportError:  # PyYAML built without LibYAML
    _Events = _PyEvents
    _BYTE_OFFSETS = False


class _Fatal(Exception):
    """A problem after which the document cannot be read on (too deep, too big, bad text)."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(str(issue))
        self.issue = issue


@dataclass
class Document:
    """A parsed YAML file: its data, where each path's key and value were written, and the
    problems found while reading it.

    `issues` are mistakes that did not stop the reading (a duplicate key, a refused tag, a value
    that is not what its tag says); `refused` holds the paths whose value was dropped for one of
    them (the value is None in `data`), so that later checks stay silent about them."""

    file: str
    data: Any
    values: dict[KeyPath, Location] = field(default_factory=dict)
    keys: dict[KeyPath, Location] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    refused: set[KeyPath] = field(default_factory=set)

    def locate(self, path: KeyPath, *, key: bool = False) -> Location:
        """The location of `path`, or of its nearest ancestor that was written down."""
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            found = table.get(path[:end]) or self.values.get(path[:end])
            if found is not None:
                return found
        return Location(self.file, 1, 1)


class _Place:
    """Turns a YAML mark into a `Location`, on a fixed line for a one-line `--set` value."""

    def __init__(self, file: str, line: int | None, col_offset: int) -> None:
        self.file = file
        self.line = line
        self.col_offset = col_offset

    def __call__(self, mark: Any) -> Location:
        if mark is None:
            return Location(self.file, self.line or 1, 1 + self.col_offset)
        line = self.line if self.line is not None else mark.line + 1
        return Location(self.file, line, mark.column + 1 + self.col_offset)


def _too_deep(at: Location, path: str, hint: str) -> _Fatal:
    return _Fatal(Issue(at, path, f"nested more than {MAX_DEPTH} levels deep", hint))


def _compose(events: Any, place: _Place) -> Node | None:
    """The node graph of the stream's single document, built without recursion.

    PyYAML's composer (and LibYAML's, up to its own limit of 1000 levels) recurses once per level
    of nesting; this one keeps an explicit stack and stops at `MAX_DEPTH` levels, at the line of
    the collection that goes too deep."""
    events.get_event()  # StreamStart
    if events.check_event(StreamEndEvent):
        return None
    document = events.get_event()  # DocumentStart
    anchors: dict[str, Node] = {}
    # Open collections, each with the key it holds while its value is composed (mappings only).
    stack: list[list[Any]] = []
    root: Node | None = None
    while True:
        event: Any = events.get_event()
        if isinstance(event, DocumentEndEvent):
            break
        node: Node
        start: Any = event.start_mark  # LibYAML's marks are typed apart from PyYAML's
        if isinstance(event, AliasEvent):
            if event.anchor not in anchors:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", start)
            node = anchors[event.anchor]
        elif isinstance(event, ScalarEvent | SequenceStartEvent | MappingStartEvent):
            anchor = event.anchor
            if anchor is not None and anchor in anchors:
                raise ComposerError(
                    f"found duplicate anchor {anchor!r}; first occurrence",
                    anchors[anchor].start_mark,
                    "second occurrence",
                    start,
                )
            tag = event.tag
            if isinstance(event, ScalarEvent):
                if tag is None or tag == "!":
                    tag = events.resolve(ScalarNode, event.value, event.implicit)
                end: Any = event.end_mark
                node = ScalarNode(tag, event.value, start, end, style=event.style)
            else:
                if len(stack) >= MAX_DEPTH:
                    raise _too_deep(place(start), "", "a recipe is a few levels deep: is this the right file?")
                kind = SequenceNode if isinstance(event, SequenceStartEvent) else MappingNode
                if tag is None or tag == "!":
                    tag = events.resolve(kind, None, event.implicit)
                node = kind(tag, [], start, None, flow_style=event.flow_style)
            if anchor is not None:
                anchors[anchor] = node
            if not isinstance(event, ScalarEvent):
                stack.append([node, None])
                continue
        elif isinstance(event, SequenceEndEvent | MappingEndEvent):
            node = stack.pop()[0]
            node.end_mark = event.end_mark
        else:  # pragma: no cover - the parser yields nothing else inside a document
            raise ComposerError(None, None, f"unexpected {type(event).__name__}", start)
        if not stack:
            root = node
            continue
        parent = stack[-1]
        if isinstance(parent[0], SequenceNode):
            parent[0].value.append(node)
        elif parent[1] is None:
            parent[1] = node
        else:
            parent[0].value.append((parent[1], node))
            parent[1] = None
    if not events.check_event(StreamEndEvent):
        event = events.get_event()
        raise ComposerError(
            "expected a single document in the stream",
            document.start_mark,
            "but found another document",
            event.start_mark,
        )
    return root


# Tags a key may carry: keys are read as the text written, whatever its plain type.
_KEY_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL}


class _Builder:
    """Turns a node graph into dicts, lists and scalars, collecting every problem."""

    def __init__(self, doc: Document, place: _Place, root: KeyPath) -> None:
        self.doc = doc
        self.place = place
        self.root = len(root)
        self.count = 0

    def loc(self, node: Node) -> Location:
        return self.place(node.start_mark)

    def refuse(self, issue: Issue, path: KeyPath) -> None:
        self.doc.issues.append(issue)
        self.doc.refused.add(path)

    def build(self, node: Node, path: KeyPath, active: tuple[int, ...] = ()) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _Fatal(
                Issue(
                    self.loc(node),
                    "",
                    f"the document expands to more than {MAX_NODES:,} values",
                    "this is an alias/anchor bomb or not a recipe; write the values out",
                )
            )
        self.doc.values.setdefault(path, self.loc(node))
        if id(node) in active:
            issue = Issue(self.loc(node), _dotted(path), "an alias refers to itself", "remove the recursive alias")
            self.refuse(issue, path)
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if node.tag not in (_SEQ, _MAP):
            self.refuse(self.bad_tag(node, path), path)
            return None
        if len(path) - self.root >= MAX_DEPTH:  # only aliases get here: the composer stops deeper documents
            raise _too_deep(self.loc(node), _dotted(path), "aliases nest their values this deep: write the values out")
        inner = (*active, id(node))
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), inner) for i, item in enumerate(node.value)]
        assert isinstance(node, MappingNode)
        return self.mapping(node, path, inner)

    def mapping(self, node: MappingNode, path: KeyPath, active: tuple[int, ...]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or (
                isinstance(key_node, ScalarNode) and key_node.value == "<<" and not key_node.style
            ):
                self.doc.issues.append(
                    Issue(self.loc(key_node), _dotted(path), "merge keys (<<) are not supported", "write the keys out")
                )
                continue
            if not isinstance(key_node, ScalarNode):
                self.doc.issues.append(
                    Issue(self.loc(key_node), _dotted(path), "a key must be a plain value, not a list or mapping")
                )
                continue
            key = key_node.value  # keys are text as written: `0: negative` has the key "0"
            key_path = (*path, key)
            if key_node.tag not in _KEY_TAGS:
                self.doc.issues.append(self.bad_tag(key_node, key_path))
                continue
            if key in result:  # the first value stays, so the rest of the file is still checked
                first = self.doc.keys[key_path]
                self.doc.issues.append(
                    Issue(
                        self.loc(key_node),
                        _dotted(key_path),
                        f"duplicate key (first written at line {first.line})",
                        "keep one of them",
                    )
                )
                continue
            self.doc.keys.setdefault(key_path, self.loc(key_node))
            result[key] = self.build(value_node, key_path, active)
        return result

    def scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        text = node.value
        tag = node.tag
        if tag == _STR:
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
        elif tag == _INT:
            try:
                return int(text, 0) if text.startswith(("0o", "0x")) else int(text)
            except ValueError:  # not an integer, or more digits than Python converts
                pass
        elif tag == _FLOAT:
            lowered = text.lower()
            if lowered.endswith(".inf"):
                return float("-inf") if lowered.startswith("-") else float("inf")
            if lowered == ".nan":
                return float("nan")
            try:
                return float(text)
            except ValueError:
                pass
        else:
            self.refuse(self.bad_tag(node, path), path)
            return None
        shown = text if len(text) <= 40 else text[:37] + "..."
        kind = tag.rsplit(":", 1)[-1]
        self.refuse(Issue(self.loc(node), _dotted(path), f"{shown!r} is not a valid {kind}"), path)
        return None

    def bad_tag(self, node: Node, path: KeyPath) -> Issue:
        python = node.tag.startswith("tag:yaml.org,2002:python/")
        return Issue(
            self.loc(node),
            _dotted(path),
            f"the tag {node.tag} is not allowed" + (" (it would construct a Python object)" if python else ""),
            "recipes hold plain values only: remove the tag",
        )


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


dotted = _dotted


def _text_problem(text: str, place: _Place) -> Issue | None:
    """A character that cannot be UTF-8 (a lone surrogate, as from undecodable command-line bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        before = text[: exc.start]
        at = place(_Mark(before.count("\n"), exc.start - (before.rfind("\n") + 1)))
        message = f"the character U+{ord(text[exc.start]):04X} is not valid text"
        return Issue(at, "", message, "write the value as UTF-8")
    return None


@dataclass(frozen=True)
class _Mark:
    line: int  # 0-based, like YAML marks
    column: int


def _reader_mark(text: str, exc: ReaderError) -> _Mark:
    """Where a reader error (a character YAML does not allow) is: LibYAML counts bytes."""
    offset = exc.position
    if _BYTE_OFFSETS:
        offset = len(text.encode("utf-8")[:offset].decode("utf-8", "ignore"))
    before = text[:offset]
    return _Mark(before.count("\n"), offset - (before.rfind("\n") + 1))


def parse_yaml(
    text: str,
    file: str,
    *,
    line: int | None = None,
    col_offset: int = 0,
    collect: bool = False,
    root: KeyPath = (),
) -> Document:
    """Parse one YAML document. Raises `RecipeInvalid` with every problem found.

    `line` and `col_offset` place a one-line snippet (a `--set` value) in its own coordinates:
    every position is reported on that line, shifted by `col_offset` columns, and `root` is the
    key path the snippet's value goes to (messages, `values`, `keys` and `refused` use full paths).

    With `collect`, problems that leave the rest of the document readable (duplicate keys, refused
    tags, bad tagged values) are returned in `Document.issues` instead, so that the caller can
    report them with every other mistake; a syntax error, too deep a nesting or an alias bomb
    still raises, as nothing sensible can be read past them."""
    place = _Place(file, line, col_offset)
    doc = Document(file=file, data=None)
    problem = _text_problem(text, place)
    if problem is not None:
        raise RecipeInvalid([problem])
    try:
        events = _Events(text)
        try:
            node = _compose(events, place)
        finally:
            events.dispose()
    except _Fatal as exc:
        raise RecipeInvalid([exc.issue]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if "expected a single document" in str(exc):
            message = "YAML syntax error: more than one YAML document"
            hint = "a recipe is a single document: remove the `---`"
        elif "maximum nesting depth" in message:  # LibYAML's own limit, met while scanning ahead
            message = f"nested more than {MAX_DEPTH} levels deep"
            hint = "a recipe is a few levels deep: is this the right file?"
        else:
            message = f"YAML syntax error: {message}"
            hint = "check the indentation and quoting around this point"
        at = place(_Mark(mark.line, min(mark.column, len(text))) if mark else None)
        raise RecipeInvalid([Issue(at, "", message, hint)]) from None
    except ReaderError as exc:  # a character YAML does not allow; no mark attribute
        at = place(_reader_mark(text, exc))
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        message = f"the character U+{char:04X} is not allowed in YAML ({exc.reason})"
        raise RecipeInvalid(
            [Issue(at, "", message, "remove it, or write it as an escape in a quoted string")]
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every YAML error is one of the above
        raise RecipeInvalid([Issue(place(None), "", f"cannot read YAML: {exc}")]) from None
    if node is None:
        return doc
    builder = _Builder(doc, place, root)
    try:
        doc.data = builder.build(node, root)
    except _Fatal as exc:
        raise RecipeInvalid([*doc.issues, exc.issue]) from None
    if doc.issues and not collect:
        raise RecipeInvalid(doc.issues)
    return doc
