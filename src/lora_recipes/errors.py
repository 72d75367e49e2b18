"""Errors that carry their exit code, and the collected form in which recipe mistakes travel.

A user's mistake (a bad recipe, a missing file, bad data) is a `UserError`: the CLI prints its
message and exits 2, never a traceback. Something that went wrong while doing the work is a
`RuntimeFailure`: exit 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file (or `--set`) and a 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Issue:
    """One mistake in a recipe: where, which key, what is wrong, and how to fix it."""

    location: Location
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.location}: {self.path}: " if self.path else f"{self.location}: "
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.message}{hint}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "col": self.location.col,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class Notice(Issue):
    """A warning or a note about a valid recipe (what a server would need a flag for, or run
    slower): printed with its place like an error, but it never makes a recipe invalid."""

    severity: str = "warning"

    def __str__(self) -> str:
        where = f"{self.location}: {self.severity}: " + (f"{self.path}: " if self.path else "")
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.message}{hint}"

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "severity": self.severity}


class LoraRecipesError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UserError(LoraRecipesError):
    """The user can fix this: a bad recipe, option, file or data set. Exit code 2."""

    exit_code = 2


class RuntimeFailure(LoraRecipesError):
    """The work itself failed (out of memory, a crashed download, a bug). Exit code 1."""

    exit_code = 1


class RecipeInvalid(UserError):
    """Every mistake found in one recipe, reported together."""

    def __init__(self, issues: Iterable[Issue]):
        self.issues = sorted(issues, key=lambda i: (i.location.file, i.location.line, i.location.col, i.path))
        super().__init__("\n".join(str(i) for i in self.issues))
