"""Bad data: what stops the run with a message, and what is skipped and counted.

The rule: a problem that means the recipe and the data disagree, or that the file is damaged, is
an error (`UserError`, exit 2) naming the file, row and column (or the recipe line) and the fix,
because training on around it would quietly learn the wrong thing. Only rows that carry nothing to
learn or to score are skipped, and every skip is counted per split in `plan`.

Errors:
- the source does not exist ("no such file or folder", with the folder it is relative to), has an
  unknown format, cannot be read (a FIFO, a dangling symbolic link, a folder where a data file
  belongs, no permission: the path and the reason), or (hub) cannot be reached;
- a data file in a data folder that is not named by split (`SPLIT.EXT`, `SPLIT-PART.EXT`; see
  `sources.py`), parts of one split in several formats or with different columns;
- a split that `data.splits` names explicitly and the source lacks (a validation or test split
  left at its default name is carved from train instead, and the report says so);
- an evaluation split the source lacks when its carving fraction is 0;
- bytes that are not UTF-8 (file, line, byte offset);
- a Parquet file that is not Parquet;
- a line that is not JSON (JSONL/JSON), a CSV row with more or fewer fields than the header;
- a template or output column the data lacks (recipe line; the columns that exist);
- an empty split: a source file without rows (CSV with only a header, JSON `[]`, Parquet with
  no row groups, an empty part of a split), or nothing left after skipping;
- a category label outside `output.labels`/`output.label_map` (file, row, value; how many rows);
- a derived column (`data.columns`) that cannot be computed for a row: a missing nested field, an
  index out of range, tags and tokens of different lengths (file, row, recipe line);
- a split column value other than 0, 1, 2 (or train, validation, test).

Counted skips:
- a row whose target is null, empty or only whitespace: `skipped_rows` of its split (there is
  nothing to learn; an evaluation row without a gold answer cannot be scored, so the fixed
  evaluation subset is the first N rows that have one);
- a row whose answer alone (target prefix, target and EOS) leaves no room for a single prompt token
  within the max length: `dropped_rows` of its split (see `tokens.py`).

Warnings (in the data report, printed by `plan`): splits carved because the source lacks them;
a max length that truncates more than half of the validation rows, or is shorter than more than
half of the evaluation subset's rows (a cut-off measured on a small or unrepresentative train).

Not a problem: a null input cell renders as empty text (see `template.render_value`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from lora_recipes.errors import Issue, Location, UserError
from lora_recipes.recipe.loader import LoadedRecipe, read_recipe_text
from lora_recipes.recipe.yamlio import KeyPath, dotted, parse_yaml


def recipe_location(loaded: LoadedRecipe, path: KeyPath) -> Location:
    """Where the key at `path` was written (its recipe line), or the command-line option that set it."""
    for end in range(len(path), 0, -1):
        if path[:end] in loaded.from_command_line:
            option = "--data" if path[:end] == ("data", "dataset") else "--set"
            return Location(option, 1, 1)
    try:
        doc = parse_yaml(read_recipe_text(loaded.path), str(loaded.path))
    except UserError:  # the file changed under us; the recipe path alone still helps
        return Location(str(loaded.path), 1, 1)
    return doc.locate(path, key=True)


def written_by_user(loaded: LoadedRecipe, path: KeyPath) -> bool:
    """Whether the recipe file or a command-line option wrote the key at `path` (rather than the
    schema's default filling it in). A command-line option that set an enclosing key counts."""
    if any(path[:end] in loaded.from_command_line for end in range(1, len(path) + 1)):
        return True
    try:
        doc = parse_yaml(read_recipe_text(loaded.path), str(loaded.path))
    except UserError:  # the file changed under us: assume it was written, the stricter reading
        return True
    return path in doc.keys


def recipe_error(loaded: LoadedRecipe, path: KeyPath, message: str, hint: str | None = None) -> UserError:
    """A data problem that the recipe must fix, reported like a recipe mistake."""
    return UserError(str(Issue(recipe_location(loaded, path), dotted(path), message, hint)))


def row_error(where: str, row: int, column: str | None, message: str, hint: str | None = None) -> UserError:
    """A problem in one row of a data file; `row` is 1-based, counting data rows only."""
    at = f"{where}: row {row}" + (f", column {column!r}" if column else "")
    return UserError(f"{at}: {message}" + (f" ({hint})" if hint else ""))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def listing(names: Iterable[str], limit: int = 30) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
