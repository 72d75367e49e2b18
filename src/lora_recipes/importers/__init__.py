"""Importers: other tools' fine-tuning configs as recipes (`lora-recipes import ludwig|axolotl`).

    CONFIG.yaml --common.read_source--> data, positions and comments (the recipe reader, yamlio)
                --ludwig.convert / axolotl.convert--> Conversion: recipe values, each with the
                  source key it came from; warnings (with lines) for settings without an
                  equivalent; notes for the tool's defaults a recipe cannot reproduce
                --writer.finish--> YAML (schema order, source comments kept, uncarried settings as
                  comments; --minimal drops values equal to the schema's defaults), read back,
                  validated by the recipe loader, written atomically

common.py   the source config and the conversion record (every source setting is carried,
            reported, or null)
ludwig.py   Ludwig LLM configs (LoRA Land's format); Ludwig's defaults made explicit
axolotl.py  Axolotl LoRA/QLoRA configs; Axolotl's defaults made explicit
writer.py   the recipe text, its checks and the atomic write

A config that cannot become a recipe (not an LLM config, no or several outputs, a dataset type
with no mapping) is one `RecipeInvalid` at the line of the setting that says so (exit code 2).
Nothing here imports an ML library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lora_recipes.importers.common import Conversion
from lora_recipes.importers.writer import ImportResult, check_output, finish

__all__ = ["TOOLS", "ImportResult", "import_config"]


def _ludwig(path: Path, dataset: str | None) -> Conversion:
    from lora_recipes.importers import ludwig

    return ludwig.convert(path, dataset)


def _axolotl(path: Path, dataset: str | None) -> Conversion:
    from lora_recipes.importers import axolotl

    return axolotl.convert(path, dataset)


TOOLS: dict[str, Callable[[Path, str | None], Conversion]] = {"ludwig": _ludwig, "axolotl": _axolotl}


def import_config(
    tool: str,
    config: Path,
    *,
    output: Path | None = None,
    minimal: bool = False,
    force: bool = False,
    dataset: str | None = None,
) -> ImportResult:
    """Convert `config` (a `tool` config) into a recipe; write it to `output` when given.
    Raises `UserError` (exit 2) for an unreadable config, one that cannot become a recipe, or an
    existing `output` without `force`."""
    check_output(output, force)  # before the config is read
    conversion = TOOLS[tool](config, dataset)
    return finish(conversion, tool, output=output, minimal=minimal, force=force)
