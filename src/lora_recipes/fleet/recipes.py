"""The recipes of a fleet, loaded with the fleet's `--set` options and each one's data. An invalid
recipe is kept, with its errors, so that it is listed beside the others instead of stopping them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_recipes.errors import LoraRecipesError, RecipeInvalid, UserError
from lora_recipes.fleet.datamap import DataChoice, choose_data, parse_data_items, read_data_map
from lora_recipes.recipe.loader import LoadedRecipe, load_recipe


@dataclass(frozen=True)
class DataOptions:
    """How the fleet chooses each recipe's data (see datamap.py)."""

    items: tuple[str, ...] = ()  # --data NAME=PATH
    data_map: Path | None = None  # --data-map FILE
    root: Path | None = None  # --data-root DIR


@dataclass(frozen=True)
class FleetRecipe:
    file: Path  # as given on the command line
    name: str  # the recipe's name (its run directory's), or the file's stem when it is invalid
    data: DataChoice
    loaded: LoadedRecipe | None  # None: invalid
    errors: tuple[str, ...] = ()  # one line per mistake

    @property
    def valid(self) -> bool:
        return self.loaded is not None


def _error_lines(file: Path, exc: LoraRecipesError) -> tuple[str, ...]:
    if isinstance(exc, RecipeInvalid):
        return tuple(str(issue) for issue in exc.issues)
    text = str(exc)
    return (text if text.startswith(str(file)) else f"{file}: {text}",)


def _load_one(
    file: Path, overrides: Sequence[str], explicit: dict[str, str], data_map: dict[str, str], root: Path | None
) -> FleetRecipe:
    try:
        loaded = load_recipe(file, overrides)
    except LoraRecipesError as exc:
        return FleetRecipe(file, file.stem, DataChoice.own(), None, _error_lines(file, exc))
    d = loaded.recipe.data
    data = choose_data(loaded.name, d.dataset, d.config, explicit=explicit, data_map=data_map, data_root=root)
    if data.path is None:
        return FleetRecipe(file, loaded.name, data, loaded)
    try:  # again with the chosen data, checked like `train --data` would
        return FleetRecipe(file, loaded.name, data, load_recipe(file, overrides, data.path))
    except LoraRecipesError as exc:
        return FleetRecipe(file, loaded.name, data, None, _error_lines(file, exc))


def load_fleet(files: Sequence[Path], overrides: Sequence[str], data: DataOptions) -> list[FleetRecipe]:
    """Every recipe of the fleet, in the order given. Two recipes with one name are refused (they
    would share a run directory), and so is a --data NAME= that names no recipe."""
    if not files:
        raise UserError("give the fleet's recipe files: lora-recipes fleet recipes/*.yaml --runs DIR")
    explicit = parse_data_items(data.items)
    data_map = read_data_map(data.data_map) if data.data_map is not None else {}
    if data.root is not None and not data.root.is_dir():
        raise UserError(f"--data-root {data.root}: no such folder")
    recipes = [_load_one(Path(f), overrides, explicit, data_map, data.root) for f in files]
    seen: dict[str, Path] = {}
    for r in recipes:
        if r.name in seen:
            raise UserError(
                f"{seen[r.name]} and {r.file} are both named {r.name!r}: a fleet gives each recipe its own run "
                "directory, DIR/<name>; rename one (name: in the file)"
            )
        seen[r.name] = r.file
    unknown = sorted(set(explicit) - set(seen))
    if unknown:
        raise UserError(
            f"--data {unknown[0]}=...: no recipe of the fleet is named {unknown[0]!r} (names: {', '.join(seen)})"
        )
    return recipes
