"""Load a recipe: read the YAML, apply `--set`/`--data` overrides, validate, fill defaults.

    raw mapping (positions kept) -> overrides -> schema + cross-field rules -> defaults -> Recipe

Every mistake on the way is collected and raised together as one `RecipeInvalid`; a valid recipe
carries its warnings and notes (`LoadedRecipe.notices`).
"""

from __future__ import annotations

import copy
import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_recipes.errors import Issue, Location, Notice, RecipeInvalid, UserError
from lora_recipes.recipe.checks import schema_issues, unusable_numbers
from lora_recipes.recipe.rules import CHAT_TEMPLATE_WORDS, rule_issues, serving_notices
from lora_recipes.recipe.schema import fill_defaults
from lora_recipes.recipe.types import Recipe, build
from lora_recipes.recipe.yamlio import Document, KeyPath, dotted, parse_yaml

# A recipe is a few KB; a file past this is not one (it is read only this far, whatever it is).
MAX_RECIPE_BYTES = 1024 * 1024

# Values that name a local file or folder: a leading `~` is the user's home, as in a shell.
PATH_FIELDS: tuple[KeyPath, ...] = (("base_model",), ("data", "dataset"), ("output_directory",))

_KEY_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")


@dataclass(frozen=True)
class Override:
    """One `--set key.path=value`; `index` is its 1-based position among the --set options."""

    path: KeyPath
    value: Any
    text: str
    index: int
    issues: tuple[Issue, ...] = ()  # mistakes inside the value that left the rest readable
    refused: frozenset[KeyPath] = frozenset()  # full paths of the values dropped for them


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
    """A valid recipe with what produced it, and its notices (warnings and notes that do not make
    it invalid: what a server needs a flag for, or runs slower)."""

    path: Path
    recipe: Recipe
    resolved: dict[str, Any]
    from_command_line: frozenset[KeyPath]
    notices: tuple[Notice, ...] = ()

    @property
    def name(self) -> str:
        return self.recipe.name or self.path.stem

    def local_path(self, path: tuple[str, ...], value: str) -> Path:
        """Resolve a path-like value: relative to the current directory when it came from the
        command line, else relative to the recipe file. A leading `~` is the home folder."""
        p = Path(os.path.expanduser(value))
        if p.is_absolute():
            return p
        return p if path in self.from_command_line else self.path.parent / p


def _override_path(text: str) -> KeyPath | None:
    key, sep, _ = text.partition("=")
    key = key.strip()
    if not sep or not _KEY_PATH.match(key):
        return None
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def parse_override(text: str, index: int) -> Override:
    """Parse `key.path=value`; the value is read with the recipe's YAML rules. Raises
    `RecipeInvalid` when the option or its value cannot be read at all; mistakes that leave the
    value readable (a refused tag) are in `Override.issues`."""
    where = f"--set {text}"
    path = _override_path(text)
    if path is None:
        key = text.partition("=")[0].strip()
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
    value_text = text.partition("=")[2]
    doc = parse_yaml(value_text, "--set", line=index, col_offset=len(text) - len(value_text), collect=True, root=path)
    return Override(path, doc.data, text, index, tuple(doc.issues), frozenset(doc.refused))


def _apply(data: dict[str, Any], override: Override, origins: Origins) -> Issue | None:
    """Set one override's value in `data`, creating the mappings on its way; changes nothing when
    it cannot be applied (so a refused override leaves no half-made mapping behind)."""
    node: Any = data
    location = Location("--set", override.index, 1)
    path = override.path
    for depth, part in enumerate(path):
        here = path[: depth + 1]
        last = depth == len(path) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return Issue(location, dotted(here), "no such list item to override", "set the whole list instead")
        elif not isinstance(node, dict):
            return Issue(location, dotted(here[:-1]), "is not a mapping, so it has no key " + repr(part))
        if last:
            break
        child = node[part] if isinstance(part, int) else node.get(part)
        if isinstance(child, dict | list):
            node = child
            continue
        # Nothing to descend into: the rest of the path is made of new mappings, and a list index
        # among it names an item that does not exist (`adapter.target_modules.0` when the recipe
        # leaves target_modules to its default).
        rest = path[depth + 1 :]
        missing = next((i for i, p in enumerate(rest) if isinstance(p, int)), None)
        if missing is not None:
            at = path[: depth + 2 + missing]
            return Issue(location, dotted(at), "no such list item to override", "set the whole list instead")
        value: Any = override.value
        for name in reversed(rest):
            value = {name: value}
        node[part] = value
        origins.overridden[path] = location
        return None
    node[path[-1]] = override.value
    origins.overridden[path] = location
    return None


_FILE_KINDS = [
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
]


def _not_a_file(path: Path, mode: int) -> UserError | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return UserError(f"{path}: is {kind}, not a recipe file")


def _unreadable(path: Path, exc: OSError | ValueError) -> UserError:
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{path}: no such file")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UserError(f"{path}: cannot read the recipe: {reason}")


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file. Raises `UserError` for anything that is not a readable regular
    file of at most `MAX_RECIPE_BYTES` bytes, and `RecipeInvalid` for text that is not UTF-8.

    Pipes, devices and folders are refused before they are opened for reading (a FIFO would block
    and /dev/zero never ends), and the file is read no further than the limit."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise _unreadable(path, exc) from None
    refused = _not_a_file(path, mode)
    if refused is not None:
        raise refused
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with os.fdopen(fd, "rb") as file:
        try:
            refused = _not_a_file(path, os.fstat(fd).st_mode)  # replaced since the first look
            if refused is not None:
                raise refused
            data = file.read(MAX_RECIPE_BYTES + 1)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:  # pragma: no cover - only a non-regular file blocks
                raise UserError(f"{path}: cannot read the recipe: it is not a regular file") from None
            raise _unreadable(path, exc) from None
    if len(data) > MAX_RECIPE_BYTES:
        raise UserError(
            f"{path}: larger than {MAX_RECIPE_BYTES:,} bytes (1 MiB), the most a recipe may be "
            "(a recipe is a few KB: is this the right file?)"
        )
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


def _set(data: Any, path: KeyPath, value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _expand_home(resolved: dict[str, Any]) -> None:
    """Expand a leading `~` in the path fields, the way a shell would (`~/runs`, `~user/data`)."""
    for path in PATH_FIELDS:
        node: Any = resolved
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str) and node[path[-1]].startswith("~"):
            node[path[-1]] = os.path.expanduser(node[path[-1]])


def _anchor_chat_template(resolved: dict[str, Any], path: Path, origins: Origins) -> None:
    """A chat template file (`prompt.chat_template` other than auto, none or tokenizer) becomes an
    absolute path: relative to the recipe, or to the current directory when it came from `--set`.
    Evaluation and `recipe.resolved.yaml` in a run directory then find it wherever they run."""
    prompt = resolved.get("prompt")
    if not isinstance(prompt, dict):
        return
    value = prompt.get("chat_template")
    if not isinstance(value, str) or value in CHAT_TEMPLATE_WORDS:
        return
    file = Path(os.path.expanduser(value))
    if not file.is_absolute():
        key = ("prompt", "chat_template")
        from_command_line = any(key[:end] in origins.overridden for end in (1, 2))
        file = file if from_command_line else path.parent / file
    prompt["chat_template"] = str(file.absolute())


def load_recipe(
    path: str | Path,
    overrides: Sequence[str] = (),
    data_path: str | None = None,
) -> LoadedRecipe:
    """Read, override, validate and resolve one recipe. Raises `RecipeInvalid` or `UserError`.

    Every mistake is reported at once: those found while reading the YAML (a duplicate key, a
    refused tag), in `--set` options, NaN and other unusable numbers, schema errors and broken
    cross-field rules. Only a file that cannot be read as YAML at all stops the checks early."""
    path = Path(path)
    text = read_recipe_text(path)
    issues: list[Issue] = []
    # Paths whose value was reported and dropped: the schema and rules say nothing more there.
    skip: set[KeyPath] = set()
    doc: Document | None
    try:
        doc = parse_yaml(text, str(path), collect=True)
    except RecipeInvalid as exc:
        issues.extend(exc.issues)
        doc = None
    else:
        issues.extend(doc.issues)
        skip |= doc.refused
    parsed: list[Override] = []
    for i, item in enumerate(overrides, start=1):
        try:
            override = parse_override(item, i)
        except RecipeInvalid as exc:
            issues.extend(exc.issues)
            key = _override_path(item)
            if key is not None:
                skip.add(key)
            continue
        parsed.append(override)
        issues.extend(override.issues)
        skip |= override.refused
    if doc is None:
        raise RecipeInvalid(issues)
    if doc.data is None:
        issues.append(Issue(Location(str(path), 1, 1), "", "the recipe is empty", "start from recipes/quickstart.yaml"))
        raise RecipeInvalid(issues)
    if not isinstance(doc.data, dict):
        issues.append(Issue(Location(str(path), 1, 1), "", "a recipe must be a mapping of keys to values"))
        raise RecipeInvalid(issues)

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

    for where, issue in unusable_numbers(data, origins.locate).items():
        _set(data, where, None)
        skip.add(where)
        issues.append(issue)
    issues.extend(schema_issues(data, origins.locate, skip))
    issues.extend(rule_issues(data, origins.locate, skip))
    if issues:
        raise RecipeInvalid(issues)
    resolved = fill_defaults(data)
    _expand_home(resolved)
    _anchor_chat_template(resolved, path, origins)
    return LoadedRecipe(
        path=path,
        recipe=build(Recipe, resolved),
        resolved=resolved,
        from_command_line=frozenset(origins.overridden),
        notices=tuple(serving_notices(data, origins.locate)),
    )
