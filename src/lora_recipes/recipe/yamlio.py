"""Read YAML the way recipes need it: positions kept, YAML 1.2 scalars, nothing dangerous.

PyYAML's composer gives us the node tree with line/column marks; we build plain Python values from
it ourselves so that we can
- remember where every key and value came from (for `FILE:LINE:COL` messages),
- resolve scalars by the YAML 1.2 core schema (`2e-4` is a number, `yes` and `no` are strings),
- refuse duplicate keys, Python-object tags and alias bombs with a clear message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from lora_recipes.errors import Issue, Location, RecipeInvalid

KeyPath = tuple[str | int, ...]

# A recipe is a few hundred nodes; anything past this is an alias bomb or not a recipe.
MAX_NODES = 100_000

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


class _ComposeOnly(Reader, Scanner, Parser, Composer, _Core12Resolver):
    """A loader that builds the node graph and never constructs Python objects."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Core12Resolver.__init__(self)


try:  # LibYAML's parser is about 5x faster; it calls the same Python resolver for scalars.
    from yaml.cyaml import CParser  # type: ignore[attr-defined]

    class _CComposeOnly(CParser, _Core12Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Core12Resolver.__init__(self)

    _Composer: type = _CComposeOnly
except ImportError:  # PyYAML built without LibYAML
    _Composer = _ComposeOnly


@dataclass
class Document:
    """A parsed YAML file: its data and where each path's key and value were written."""

    file: str
    data: Any
    values: dict[KeyPath, Location] = field(default_factory=dict)
    keys: dict[KeyPath, Location] = field(default_factory=dict)

    def locate(self, path: KeyPath, *, key: bool = False) -> Location:
        """The location of `path`, or of its nearest ancestor that was written down."""
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            found = table.get(path[:end]) or self.values.get(path[:end])
            if found is not None:
                return found
        return Location(self.file, 1, 1)


def _loc(file: str, node: Node, line: int | None = None, col_offset: int = 0) -> Location:
    mark = node.start_mark
    return Location(file, line if line is not None else mark.line + 1, mark.column + 1 + col_offset)


class _Builder:
    """Turns a node graph into dicts, lists and scalars, collecting every problem."""

    def __init__(self, doc: Document, line: int | None, col_offset: int) -> None:
        self.doc = doc
        self.line = line
        self.col_offset = col_offset
        self.issues: list[Issue] = []
        self.count = 0
        self.too_big = False

    def loc(self, node: Node) -> Location:
        return _loc(self.doc.file, node, self.line, self.col_offset)

    def build(self, node: Node, path: KeyPath, active: tuple[int, ...] = ()) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            if not self.too_big:
                self.too_big = True
                self.issues.append(
                    Issue(
                        self.loc(node),
                        "",
                        f"the document expands to more than {MAX_NODES:,} values",
                        "this is an alias/anchor bomb or not a recipe; write the values out",
                    )
                )
            return None
        self.doc.values.setdefault(path, self.loc(node))
        if id(node) in active:
            self.issues.append(
                Issue(self.loc(node), _dotted(path), "an alias refers to itself", "remove the recursive alias")
            )
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if node.tag not in (_SEQ, _MAP):
            self.issues.append(self.bad_tag(node, path))
            return None
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
                self.issues.append(
                    Issue(self.loc(key_node), _dotted(path), "merge keys (<<) are not supported", "write the keys out")
                )
                continue
            if not isinstance(key_node, ScalarNode):
                self.issues.append(
                    Issue(self.loc(key_node), _dotted(path), "a key must be a plain value, not a list or mapping")
                )
                continue
            key = key_node.value  # keys are text as written: `0: negative` has the key "0"
            key_path = (*path, key)
            if key in result:
                first = self.doc.keys[key_path]
                self.issues.append(
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
            return text.lower() == "true"
        if tag == _INT:
            try:
                return int(text, 0) if text.startswith(("0o", "0x")) else int(text)
            except ValueError:
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
            self.issues.append(self.bad_tag(node, path))
            return None
        self.issues.append(Issue(self.loc(node), _dotted(path), f"{text!r} is not a valid {tag.rsplit(':', 1)[-1]}"))
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


def parse_yaml(text: str, file: str, *, line: int | None = None, col_offset: int = 0) -> Document:
    """Parse one YAML document. Raises `RecipeInvalid` with every problem found.

    `line` and `col_offset` place a one-line snippet (a `--set` value) in its own coordinates:
    every position is reported on that line, shifted by `col_offset` columns."""
    doc = Document(file=file, data=None)
    try:
        loader = _Composer(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at_line = line if line is not None else (mark.line + 1 if mark else 1)
        col = min(mark.column, len(text)) + 1 + col_offset if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        if "expected a single document" in str(exc):
            problem, hint = "more than one YAML document", "a recipe is a single document: remove the `---`"
        else:
            hint = "check the indentation and quoting around this point"
        raise RecipeInvalid([Issue(Location(file, at_line, col), "", f"YAML syntax error: {problem}", hint)]) from None
    except yaml.YAMLError as exc:  # reader errors (bad characters) carry no mark attribute
        raise RecipeInvalid([Issue(Location(file, 1, 1), "", f"cannot read YAML: {exc}")]) from None
    if root is None:
        doc.data = None
        return doc
    builder = _Builder(doc, line, col_offset)
    doc.data = builder.build(root, ())
    if builder.issues:
        raise RecipeInvalid(builder.issues)
    return doc
