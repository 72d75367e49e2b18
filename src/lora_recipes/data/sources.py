"""Read a recipe's data source into plain rows, one list per source split.

Sources: a CSV, JSONL, JSON or Parquet file (its rows are the source's training split); a folder of
such files named by split; or a Hugging Face hub dataset by id, config and revision. Files are
read through `datasets` (its Arrow cache lives under the lora-recipes cache); text files are first
checked here, because the library's own errors name neither the row nor the problem, and it
silently fills a CSV row that is short of fields with nulls.

The folder rule. Every data file (`.csv`, `.jsonl`, `.json`, `.parquet`) in the folder belongs to
one split, named by the start of its file name: `SPLIT.EXT` or `SPLIT-PART.EXT`, where SPLIT is
letters, digits and underscores and PART is anything (`train.jsonl`, `train-part2.jsonl`,
`test-00000-of-00002.parquet`, `validation_matched.csv`). All files of a split are its parts, read
in order: `SPLIT.EXT` first, then the others by name with numbers compared as numbers (`part2`
before `part10`); they must share one format and one set of columns. A data file named otherwise
(`train (1).jsonl`, `train.part2.jsonl`) is an error naming it, never silently skipped; other
files (README.md, hidden files) and subfolders are ignored. When the folder itself holds no data
files, its `data/` subfolder is read the same way (the layout of hub dataset repositories).

Which splits are read: `data.splits` names the source's train, validation and test splits. A
validation or test split the source lacks is carved from train (see `splits.py`) when the recipe
left its name at the default or set it to null; a name the recipe (or `--set`) wrote explicitly
must exist. The data report says which splits were carved and with what fraction.

Paths: `data.dataset` is relative to the recipe, `--data` to the current folder. A value that is
not on disk is a hub id only when it looks like one (`name` or `owner/name`); anything else (it
starts with `.`, `/` or `~`, has more than one `/` or a data-file extension) is a missing path. A
path that is there but cannot be used (a FIFO, a dangling symbolic link, a file used as a folder,
no permission) is named with the reason.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_recipes.data import hub
from lora_recipes.data.problems import listing, recipe_error, written_by_user
from lora_recipes.errors import UserError
from lora_recipes.recipe.loader import LoadedRecipe

BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_FORMATS = {".csv", ".jsonl", ".json"}
# SPLIT.EXT or SPLIT-PART.EXT: train.jsonl, train-part2.jsonl, test-00000-of-00002.parquet
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)(?:-(?P<part>.+))?(?P<ext>\.[^.]+)$")
NAMING_RULE = (
    "in a data folder every .csv, .jsonl, .json and .parquet file is named SPLIT.EXT or SPLIT-PART.EXT, "
    "SPLIT being letters, digits and _: train.jsonl, train-part2.jsonl, test-00000-of-00002.parquet"
)
# Hub ids: `name` or `owner/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_EMPTY_JSON = re.compile(r"^\s*(?:\[\s*\]|\{\s*\})\s*$")
ROLES = ("train", "validation", "test")


@dataclass
class SourceSplit:
    name: str  # the split's name in the source
    where: str  # for messages: the file(s), or hub id and split
    rows: list[dict[str, Any]]
    parts: list[tuple[str, int]] = field(default_factory=list)  # (file, rows) of a split in several files

    def place(self, index: int) -> tuple[str, int]:
        """Where the split's row `index` (0-based) is: its file and 1-based row in that file."""
        start = 0
        for where, count in self.parts:
            if index < start + count:
                return where, index - start + 1
            start += count
        return self.where, index + 1


@dataclass
class Source:
    kind: str  # file, folder or hub
    description: str
    splits: dict[str, SourceSplit]
    # train/validation/test -> the source split it reads; None: carved from train (or, with a split
    # column, taken from it). Only train with a split column.
    roles: dict[str, str | None] = field(default_factory=dict)
    # validation/test roles carved because the source lacks the split their default name names ->
    # the source's split names, for the report
    lacking: dict[str, list[str]] = field(default_factory=dict)


class PathProblem(Exception):
    """Something is at a path, but it cannot be read as data; the message names it and why."""


def load_source(loaded: LoadedRecipe) -> Source:
    data = loaded.recipe.data
    where = ("data", "dataset")
    path = loaded.local_path(where, data.dataset)
    try:
        kind = local_kind(path, "a data file or folder")
    except PathProblem as exc:
        raise recipe_error(loaded, where, str(exc), source_hint(loaded)) from None
    if kind == "file":
        if path.suffix.lower() not in BUILDERS:
            raise recipe_error(
                loaded,
                where,
                f"{path}: unknown file type {path.suffix!r}",
                "use a .csv, .jsonl, .json or .parquet file, or a folder of them",
            )
        # A single file is the training split; the others are carved from it or come from a split column.
        roles, lacking = resolve_roles(loaded, [data.splits.train], f"the single file {path}")
        split = read_split(data.splits.train, [path], str(path))
        return Source("file", str(path), {data.splits.train: split}, roles, lacking)
    if kind == "folder":
        return load_folder(loaded, path)
    if looks_like_path(data.dataset):
        raise recipe_error(
            loaded, where, f"no such file or folder: {path.absolute()}{missing_reason(path)}", source_hint(loaded)
        )
    return load_hub(loaded, path)


def source_hint(loaded: LoadedRecipe) -> str:
    if ("data", "dataset") in loaded.from_command_line:
        relative = f"a path on the command line is relative to the current folder, {Path.cwd()}"
    else:
        relative = f"data.dataset is relative to the recipe's folder, {loaded.path.parent.absolute()}"
    return f"{relative}; point data.dataset or --data PATH at a data file or a folder of train/validation/test files"


def looks_like_path(value: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that is not on disk is a missing path."""
    return (
        value.startswith((".", "/", "~"))
        or "\\" in value
        or Path(value).suffix.lower() in BUILDERS
        or not _HUB_ID.match(value)
    )


def local_kind(path: Path, expected: str) -> str | None:
    """'file' or 'folder', or None when nothing is there. Raises `PathProblem` when something is
    there that is neither (a FIFO, a device, a dangling symbolic link) or that cannot be looked at;
    never opens the path, so a FIFO cannot block."""
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise PathProblem(
                f"{path}: a symbolic link to {os.readlink(path)}, which does not exist (point the link at the data, "
                "or remove it)"
            ) from None
        return None
    except NotADirectoryError:
        return None  # a path component is a file: see missing_reason
    except OSError as exc:
        raise PathProblem(unreadable(path, exc)) from None
    except ValueError as exc:  # an embedded NUL byte
        raise PathProblem(f"{str(path)!r} is not a usable path ({exc})") from None
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    if stat.S_ISREG(info.st_mode):
        return "file"
    raise PathProblem(f"{path}: a {special_kind(info.st_mode)}, not {expected} (save the rows to a regular file)")


def special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def missing_reason(path: Path) -> str:
    """Why a missing path is missing, when a folder on its way is really a file."""
    for parent in reversed(path.absolute().parents):
        if parent.is_file():
            return f" ({parent} is a file, not a folder)"
    return ""


def unreadable(path: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = " (check the permissions of it and of the folders above it)" if isinstance(exc, PermissionError) else ""
    return f"{path}: cannot be read: {reason}{fix}"


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key comparing runs of digits as numbers: part2 before part10."""
    return [(0, int(chunk)) if chunk.isdigit() else (1, chunk) for chunk in re.split(r"(\d+)", text) if chunk]


def folder_entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise UserError(unreadable(folder, exc)) from None


def split_files(folder: Path) -> dict[str, list[Path]]:
    """The data files of each split (see the folder rule above), in reading order."""
    for candidate in (folder, folder / "data"):
        if candidate is not folder:
            try:
                if local_kind(candidate, "a folder") != "folder":
                    break
            except PathProblem as exc:
                raise UserError(str(exc)) from None
        entries = [e for e in folder_entries(candidate) if not e.name.startswith(".") and e.suffix.lower() in BUILDERS]
        if not entries:
            continue
        found: dict[str, list[tuple[Any, Path]]] = defaultdict(list)
        for entry in entries:
            try:
                kind = local_kind(entry, "a data file")
            except PathProblem as exc:
                raise UserError(str(exc)) from None
            if kind == "folder":
                raise UserError(f"{entry}: a folder, not a data file ({NAMING_RULE}; rename the folder or move it out)")
            if kind is None:
                continue  # gone since the listing
            m = _SPLIT_FILE.match(entry.name)
            if m is None:
                raise UserError(
                    f"{entry}: not named by split ({NAMING_RULE}; rename it, or move it out of {candidate})"
                )
            part = m["part"]
            found[m["split"]].append(((part is not None, natural_key(part or "")), entry))
        return {name: [p for _, p in sorted(files, key=lambda f: (f[0], f[1].name))] for name, files in found.items()}
    return {}


def load_folder(loaded: LoadedRecipe, folder: Path) -> Source:
    files = split_files(folder)
    if not files:
        raise recipe_error(
            loaded,
            ("data", "dataset"),
            f"{folder} holds no data files",
            "name them by split: train.jsonl, validation.jsonl, test.jsonl (or .csv, .json, .parquet)",
        )
    for name, paths in files.items():
        kinds = {p.suffix.lower() for p in paths}
        if len(kinds) > 1:
            raise UserError(
                f"{folder}: the {name!r} split is in several formats ({', '.join(p.name for p in paths)}); keep one"
            )
    roles, lacking = resolve_roles(loaded, sorted(files), f"the folder {folder}")
    splits = {}
    for name in (n for n in roles.values() if n is not None):
        paths = files[name]
        where = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent} ({listing((p.name for p in paths), 5)})"
        splits[name] = read_split(name, paths, where)
    names = ", ".join(p.name for name in splits for p in files[name])
    return Source("folder", f"{folder} ({names})", splits, roles, lacking)


def resolve_roles(
    loaded: LoadedRecipe, present: list[str], what: str
) -> tuple[dict[str, str | None], dict[str, list[str]]]:
    """The source split each of train, validation and test reads (None: carved from train), and
    the roles carved because the source lacks the split of their default name. A split name the
    recipe wrote must exist."""
    data = loaded.recipe.data
    roles: dict[str, str | None] = {"train": data.splits.train}
    lacking: dict[str, list[str]] = {}
    if data.split.type == "hash":  # a split column gives validation and test from the training source
        for role in ("validation", "test"):
            name = getattr(data.splits, role)
            if name is not None and name not in present and not written_by_user(loaded, ("data", "splits", role)):
                lacking[role] = list(present)
                name = None
            roles[role] = name
    for role in ROLES:
        name = roles.get(role)
        if name is not None and name not in present:
            hint = (
                f"name one of them in data.splits.{role}"
                if role == "train"
                else f"name one of them in data.splits.{role}, or set it to null to carve it from train by row hash"
            )
            raise recipe_error(
                loaded, ("data", "splits", role), f"{what} has no {name!r} split (it has: {listing(present)})", hint
            )
    return roles, lacking


def read_split(name: str, paths: list[Path], where: str) -> SourceSplit:
    """The rows of one split; several files are its parts, read in the given order."""
    rows: list[dict[str, Any]] = []
    parts: list[tuple[str, int]] = []
    first: tuple[Path, list[str]] | None = None
    for path in paths:
        part = read_file(path)
        if not part and len(paths) > 1:
            raise UserError(f"{path}: no rows: an empty file among the {name!r} split's files (fill it or remove it)")
        if part:
            columns = list(part[0])
            if first is None:
                first = (path, columns)
            elif set(columns) != set(first[1]):
                raise UserError(
                    f"{path}: columns {', '.join(columns)}, but {first[0]} has {', '.join(first[1])} "
                    f"(every file of the {name!r} split needs the same columns)"
                )
        parts.append((str(path), len(part)))
        rows += part
    return SourceSplit(name, where, rows, parts if len(paths) > 1 else [])


def read_file(path: Path) -> list[dict[str, Any]]:
    """The rows of one data file; [] when it has none."""
    suffix = path.suffix.lower()
    if suffix in TEXT_FORMATS and not check_text_file(path):
        return []  # no data rows: an empty split, reported by the caller
    if suffix == ".parquet" and parquet_rows(path) == 0:
        return []
    from lora_recipes.notices import quiet_known_notices

    quiet_known_notices()
    import datasets

    from lora_recipes.paths import cache_root

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        ds = datasets.load_dataset(
            BUILDERS[suffix],
            data_files={"rows": [str(path)]},
            split="rows",
            cache_dir=str(cache_root() / "datasets"),
        )
    except Exception as exc:  # the builders raise many kinds; find what is wrong ourselves
        diagnose(path)
        cause = exc.__cause__ or exc
        raise UserError(f"{path}: cannot read the rows: {first_line(cause)}") from None
    rows: list[dict[str, Any]] = ds.to_list()
    return rows


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(unreadable(path, exc)) from None


def parquet_rows(path: Path) -> int:
    """The row count in a Parquet file's footer (an empty file makes the reader fail obscurely)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(path).num_rows)
    except OSError as exc:
        raise UserError(unreadable(path, exc)) from None
    except Exception as exc:  # pyarrow's ArrowInvalid: not Parquet, or damaged
        raise UserError(
            f"{path}: not a Parquet file ({first_line(exc)}) (write it with pandas' to_parquet or pyarrow, "
            "or save the rows as .csv or .jsonl)"
        ) from None


def check_text_file(path: Path) -> bool:
    """Refuse bytes that are not UTF-8 and ragged CSV rows; False when the file has no data rows."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(
            f"{path}: line {line}, byte {column}: {data[exc.start]:#04x} is not UTF-8 text "
            "(save the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if not text.strip():
        return False
    if path.suffix.lower() == ".csv":
        return check_csv(path, text)
    return not (path.suffix.lower() == ".json" and _EMPTY_JSON.match(text))  # [] or {}: no rows


def check_csv(path: Path, text: str) -> bool:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = next(reader)
        rows = 0
        for record in reader:
            if not record:
                continue  # blank line
            rows += 1
            if len(record) != len(header):
                raise UserError(
                    f"{path}: line {reader.line_num} (row {rows}): {len(record)} fields, but the header has "
                    f"{len(header)} ({', '.join(header)}) (a ragged row: quote values that contain commas)"
                )
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: {exc}") from None
    return rows > 0


def diagnose(path: Path) -> None:
    """Raise a precise error for the first broken line of a JSON file, if there is one."""
    if path.suffix.lower() not in (".jsonl", ".json"):
        return
    text = path.read_text(encoding="utf-8")
    try:
        json.loads(text)
        return  # one JSON document (an array of rows)
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}: line {number}, character {exc.colno}: not JSON ({exc.msg}) "
                "(each line of a JSONL file must be one JSON object)"
            ) from None
        if not isinstance(value, dict):
            raise UserError(f"{path}: line {number}: a JSON {type(value).__name__}, not an object of columns")


def load_hub(loaded: LoadedRecipe, local: Path) -> Source:
    data = loaded.recipe.data
    label = data.dataset + (f" (config {data.config})" if data.config else "")
    # The value could have meant a local path: say that there is none, and where it was looked for.
    not_local = f"no such file or folder: {local.absolute()}{missing_reason(local)}"
    reason = hub.unreachable_reason()
    if reason is not None and not hub.offline_mode():
        raise recipe_error(
            loaded,
            ("data", "dataset"),
            f"{label} is read from the Hugging Face hub, which cannot be reached: {reason}; "
            f"nor is it a local path: {not_local}",
            "download the data and point --data at it: --data PATH, a CSV, JSONL, JSON or Parquet file "
            "or a folder of train/validation/test files",
        )
    from lora_recipes.notices import quiet_known_notices

    quiet_known_notices()
    import datasets

    from lora_recipes.paths import cache_root

    datasets.disable_progress_bars()
    try:
        dd = datasets.load_dataset(
            data.dataset, name=data.config, revision=data.revision, cache_dir=str(cache_root() / "datasets")
        )
    # RuntimeError: datasets >= 4 refuses repositories that are loading scripts.
    except (OSError, ValueError, RuntimeError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise recipe_error(
            loaded,
            ("data", "dataset"),
            f"cannot load {label} from the hub: {first_line(exc)}; nor is it a local path: {not_local}",
            "check the id, data.config and data.revision, or the local path; or point --data PATH at local files",
        ) from None
    roles, lacking = resolve_roles(loaded, list(dd), f"the hub dataset {label}")
    splits = {
        name: SourceSplit(name, f"{data.dataset}[{name}]", dd[name].to_list())
        for name in roles.values()
        if name is not None
    }
    return Source("hub", label, splits, roles, lacking)
