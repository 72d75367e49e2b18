"""Which data each recipe of a fleet trains on.

In this order, the first that names the recipe wins:

1. `--data NAME=PATH` on the command line (NAME is the recipe's name);
2. `--data-map FILE`: a YAML mapping of recipe names to paths, relative to the file;
3. `--data-root ROOT`: the first folder of ROOT named after the recipe (`ROOT/glue_sst2`), its
   `data.config` (`ROOT/sst2`), the last part of its `data.dataset` (`ROOT/viggo` for GEM/viggo),
   its name without a `glue_` prefix, or the first word of its name (`ROOT/arc` for arc_combined);
4. the recipe's own `data.dataset`.

Paths come back absolute, so that a child process (or a Ray worker) with another working
directory reads the same data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_recipes.errors import UserError


@dataclass(frozen=True)
class DataChoice:
    path: str | None  # None: the recipe's own data source
    how: str  # where the choice came from, for the status lines

    @classmethod
    def own(cls) -> DataChoice:
        return cls(None, "the recipe's own data")


def parse_data_items(items: Sequence[str]) -> dict[str, str]:
    """`--data NAME=PATH` options as {name: absolute path}."""
    chosen: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(
                f"--data {item}: a fleet takes --data NAME=PATH (the recipe's name, then its data); "
                "use --data-root DIR for a folder of data folders"
            )
        chosen[name.strip()] = str(Path(path.strip()).expanduser().resolve())
    return chosen


def read_data_map(path: Path) -> dict[str, str]:
    """A YAML mapping of recipe names to data paths (relative paths: relative to the file)."""
    import yaml

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"--data-map {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--data-map {path}: not YAML ({exc})") from None
    if not isinstance(content, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in content.items()):
        raise UserError(f"--data-map {path}: write one `recipe_name: path` line per recipe")
    return {name: str((path.parent / Path(p).expanduser()).resolve()) for name, p in content.items()}


def root_candidates(name: str, dataset: str | None, config: str | None) -> list[str]:
    """Folder names under --data-root to try for a recipe, in order, without repeats."""
    names = [name, config or ""]
    if dataset:
        names.append(dataset.rstrip("/").split("/")[-1])
    names += [name.removeprefix("glue_"), name.split("_")[0]]
    seen: list[str] = []
    for n in names:
        if n and n not in seen and n not in (".", ".."):
            seen.append(n)
    return seen


def choose_data(
    name: str,
    dataset: str | None,
    config: str | None,
    *,
    explicit: Mapping[str, str],
    data_map: Mapping[str, str],
    data_root: Path | None,
) -> DataChoice:
    """The data of one recipe (see the module notes)."""
    if name in explicit:
        return DataChoice(explicit[name], f"--data {name}=...")
    if name in data_map:
        return DataChoice(data_map[name], "--data-map")
    if data_root is not None:
        for candidate in root_candidates(name, dataset, config):
            folder = data_root / candidate
            if folder.exists():
                return DataChoice(str(folder.resolve()), f"--data-root: {candidate}")
    return DataChoice.own()
