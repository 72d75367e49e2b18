"""Read a recipe's data source into plain rows, one list per source split.

Sources: a CSV, JSONL, JSON or Parquet file (its rows are the source's training split); a folder of
such files named by split (`train.jsonl`, `validation.csv`, `test-00000-of-00002.parquet`, ...,
directly in the folder or in its `data/` subfolder); or a Hugging Face hub dataset by id, config
and revision. Files are read through `datasets` (its Arrow cache lives under the lora-recipes
cache); text files are first checked here, because the library's own errors name neither the row
nor the problem, and it silently fills a CSV row that is short of fields with nulls.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.data import hub
from lora_recipes.data.problems import listing, recipe_error
from lora_recipes.errors import UserError
from lora_recipes.recipe.loader import LoadedRecipe

BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_FORMATS = {".csv", ".jsonl", ".json"}
# train.jsonl, validation.csv, test-00000-of-00002.parquet
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+?)(?:-\d+-of-\d+)?(?P<ext>\.csv|\.jsonl|\.json|\.parquet)$")


@dataclass
class SourceSplit:
    name: str  # the split's name in the source
    where: str  # for messages: the file, or hub id and split
    rows: list[dict[str, Any]]


@dataclass
class Source:
    kind: str  # file, folder or hub
    description: str
    splits: dict[str, SourceSplit]


def load_source(loaded: LoadedRecipe) -> Source:
    data = loaded.recipe.data
    path = loaded.local_path(("data", "dataset"), data.dataset)
    if path.is_file():
        if path.suffix.lower() not in BUILDERS:
            raise recipe_error(
                loaded,
                ("data", "dataset"),
                f"{path}: unknown file type {path.suffix!r}",
                "use a .csv, .jsonl, .json or .parquet file, or a folder of them",
            )
        # A single file is the training split; the recipe must say how the others are made.
        missing_split_check(loaded, needed_splits(loaded), [data.splits.train], f"the single file {path}")
        rows = read_files([path], str(path))
        return Source("file", str(path), {data.splits.train: SourceSplit(data.splits.train, str(path), rows)})
    if path.is_dir():
        return load_folder(loaded, path)
    if looks_like_path(data.dataset):
        raise recipe_error(
            loaded,
            ("data", "dataset"),
            f"{path} does not exist",
            "point data.dataset (or --data PATH) at a data file or a folder of train/validation/test files",
        )
    return load_hub(loaded, path)


def looks_like_path(value: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that is not on disk is a missing path."""
    return (
        value.startswith((".", "/", "~"))
        or "\\" in value
        or value.count("/") > 1
        or Path(value).suffix.lower() in BUILDERS
    )


def split_files(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = defaultdict(list)
    for candidate in (folder, folder / "data"):
        if not candidate.is_dir():
            continue
        for file in sorted(candidate.iterdir()):
            m = _SPLIT_FILE.match(file.name)
            if m and file.is_file():
                found[m["split"]].append(file)
        if found:
            break
    return dict(found)


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
    needed = needed_splits(loaded)
    missing_split_check(loaded, needed, list(files), f"the folder {folder}")
    splits = {}
    for name in needed:
        paths = files[name]
        where = str(paths[0]) if len(paths) == 1 else f"{folder}/{name}-*{paths[0].suffix}"
        splits[name] = SourceSplit(name, where, read_files(paths, where))
    names = ", ".join(f"{p.name}" for name in needed for p in files[name])
    return Source("folder", f"{folder} ({names})", splits)


def needed_splits(loaded: LoadedRecipe) -> list[str]:
    """The source split names the recipe reads: train, plus validation and test unless carved (or
    given by a split column, which lives in the training source)."""
    data = loaded.recipe.data
    names = [data.splits.train]
    if data.split.type == "hash":
        names += [n for n in (data.splits.validation, data.splits.test) if n is not None]
    return names


def missing_split_check(loaded: LoadedRecipe, needed: list[str], present: list[str], what: str) -> None:
    splits = loaded.recipe.data.splits
    for key in ("train", "validation", "test"):
        name = getattr(splits, key)
        if name in needed and name not in present:
            hint = (
                f"name one of them in data.splits.{key}"
                if key == "train"
                else f"name one of them in data.splits.{key}, or set it to null to carve it from train by row hash"
            )
            raise recipe_error(
                loaded,
                ("data", "splits", key),
                f"{what} has no {name!r} split (it has: {listing(present)})",
                hint,
            )


def read_files(paths: list[Path], where: str) -> list[dict[str, Any]]:
    """The rows of one split (several files are shards, read in name order)."""
    builder = BUILDERS[paths[0].suffix.lower()]
    usable = []
    for path in paths:
        if path.suffix.lower() in TEXT_FORMATS and not check_text_file(path):
            continue  # no data rows: an empty split, reported by the caller
        usable.append(path)
    if not usable:
        return []
    import datasets

    from lora_recipes.paths import cache_root

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        ds = datasets.load_dataset(
            builder,
            data_files={"rows": [str(p) for p in usable]},
            split="rows",
            cache_dir=str(cache_root() / "datasets"),
        )
    except Exception as exc:  # the builders raise many kinds; find what is wrong ourselves
        for path in usable:
            diagnose(path)
        cause = exc.__cause__ or exc
        raise UserError(f"{where}: cannot read the rows: {first_line(cause)}") from None
    rows: list[dict[str, Any]] = ds.to_list()
    return rows


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_text_file(path: Path) -> bool:
    """Refuse bytes that are not UTF-8 and ragged CSV rows; False when the file has no data rows."""
    data = path.read_bytes()
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
    return True


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
    reason = hub.unreachable_reason()
    if reason is not None and not hub.offline_mode():
        also = f"; no local file or folder {local} exists either" if "/" in data.dataset else ""
        raise recipe_error(
            loaded,
            ("data", "dataset"),
            f"{label} is read from the Hugging Face hub, which cannot be reached: {reason}{also}",
            "download the data and point --data at it: --data PATH, a CSV, JSONL, JSON or Parquet file "
            "or a folder of train/validation/test files",
        )
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
            f"cannot load {label} from the hub: {first_line(exc)}",
            "check the id, data.config and data.revision, or point --data PATH at local files",
        ) from None
    needed = needed_splits(loaded)
    missing_split_check(loaded, needed, list(dd), f"the hub dataset {label}")
    splits = {name: SourceSplit(name, f"{data.dataset}[{name}]", dd[name].to_list()) for name in needed}
    return Source("hub", label, splits)
