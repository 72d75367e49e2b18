"""The plan as typed, frozen sections, and its JSON: `Plan.to_json()` is the one layout that
`plan --format json` prints and a run directory's plan.json holds.

Layout (keys in this order): name, recipe, effective_batch_size, processes, base_model,
lora_trainable_params, max_length, steps, estimate, warnings; then, when the data was read, the
data section's keys: data, splits, tokens, max_length_setting, truncated_rows, dropped_rows,
skipped_rows, split_hashes, tokens_to_train, target_tokens_to_train.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_recipes.model.architectures import Architecture
from lora_recipes.planning.estimate import Estimate, UnknownEstimate


@dataclass(frozen=True)
class Steps:
    micro_batches_per_epoch: int
    per_epoch: int
    total: int
    epochs: float
    validations: int

    def to_json(self) -> dict[str, Any]:
        return {
            "per_epoch": self.per_epoch,
            "total": self.total,
            "epochs": self.epochs,
            "validations": self.validations,
        }


@dataclass(frozen=True)
class BaseModel:
    id: str
    architecture: Architecture | None  # None: not a known shape

    def to_json(self) -> dict[str, Any]:
        arch = self.architecture
        if arch is None:
            return {"id": self.id, "architecture": None, "total_params": None}
        return {"id": self.id, "architecture": arch.name, "total_params": arch.total_params}


@dataclass(frozen=True)
class Training:
    """What will be trained and for how long (the text plan's "training" section)."""

    base_model: BaseModel
    trainable_params: int | None
    processes: int
    effective_batch_size: int  # rows per optimizer step, over every process
    max_length: int | None
    steps: Steps | None  # None: the number of training rows is unknown
    validation_rows: int | None = None  # rows each validation scores (trainer.validation_max_rows applied)
    validation_split_rows: int | None = None  # rows of the validation split


# --- the data section: what the data pipeline measured (`data.pipeline.data_report`) ---------------


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    approximate: bool
    stands_in_for: str | None = None  # approximate counts: the tokenizer they stand in for, and why
    note: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TokenizerInfo:
        return cls(d["name"], d["approximate"], d.get("stands_in_for"), d.get("note"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "approximate": self.approximate}
        if self.stands_in_for is not None:
            out.update(stands_in_for=self.stands_in_for, note=self.note)
        return out


@dataclass(frozen=True)
class FewShot:
    type: str  # none, fixed or retrieval
    count: int
    seed: int | None = None  # retrieval: the seed that drew the rows, and which rows
    rows: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FewShot:
        rows = d.get("rows")
        return cls(d["type"], d["count"], d.get("seed"), None if rows is None else tuple(rows))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "count": self.count}
        if self.seed is not None or self.rows is not None:
            out.update(seed=self.seed, rows=list(self.rows or ()))
        return out


@dataclass(frozen=True)
class DataSource:
    source: str
    kind: str
    tokenizer: TokenizerInfo
    few_shot: FewShot
    cache: str
    prompt_format: Mapping[str, Any] | None = None  # data.chat: the chat-template setting and one example

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DataSource:
        tokenizer, few_shot = TokenizerInfo.from_json(d["tokenizer"]), FewShot.from_json(d["few_shot"])
        return cls(d["source"], d["kind"], tokenizer, few_shot, d["cache"], d.get("prompt_format"))

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "tokenizer": self.tokenizer.to_json(),
            "few_shot": self.few_shot.to_json(),
            "cache": self.cache,
            **({"prompt_format": dict(self.prompt_format)} if self.prompt_format is not None else {}),
        }


@dataclass(frozen=True)
class RowCounts:
    """Rows of one split, and the rows left out of it before tokenizing."""

    rows: int
    skipped_rows: int  # unusable (no answer, bad values)
    capped_rows: int  # beyond data.max_rows


@dataclass(frozen=True)
class SplitTokens:
    """A tokenized split: its examples and what the max-length cut did to them."""

    examples: int
    truncated_rows: int
    dropped_rows: int
    tokens: int


@dataclass(frozen=True)
class SplitSummary:
    origin: str
    used: bool
    hash: str
    counts: RowCounts
    carved_fraction: float | None  # the share of train carved into it, when carved by row hash
    tokenized: SplitTokens | None  # None: the recipe does not use the split, so it is not tokenized

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SplitSummary:
        counts = RowCounts(d["rows"], d["skipped_rows"], d["capped_rows"])
        tokenized = (
            SplitTokens(d["examples"], d["truncated_rows"], d["dropped_rows"], d["tokens"]) if "examples" in d else None
        )
        return cls(d["from"], d["used"], d["hash"], counts, d.get("carved_fraction"), tokenized)

    def to_json(self) -> dict[str, Any]:
        c, t = self.counts, self.tokenized
        out: dict[str, Any] = {"rows": c.rows, "from": self.origin, "used": self.used, "hash": self.hash}
        out.update(skipped_rows=c.skipped_rows, capped_rows=c.capped_rows, carved_fraction=self.carved_fraction)
        if t is not None:
            out.update(
                examples=t.examples, truncated_rows=t.truncated_rows, dropped_rows=t.dropped_rows, tokens=t.tokens
            )
        return out


@dataclass(frozen=True)
class TokenStats:
    min: int
    p50: int
    p95: int
    p99: int
    max: int
    mean: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TokenStats:
        return cls(d["min"], d["p50"], d["p95"], d["p99"], d["max"], d["mean"])

    def to_json(self) -> dict[str, Any]:
        return {"min": self.min, "p50": self.p50, "p95": self.p95, "p99": self.p99, "max": self.max, "mean": self.mean}


@dataclass(frozen=True)
class TokenLengths:
    """Token lengths of the training rows."""

    prompt: TokenStats
    target: TokenStats
    total: TokenStats  # prompt + answer: what the max length cuts

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TokenLengths:
        return cls(
            TokenStats.from_json(d["prompt"]), TokenStats.from_json(d["target"]), TokenStats.from_json(d["total"])
        )

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt.to_json(), "target": self.target.to_json(), "total": self.total.to_json()}


@dataclass(frozen=True)
class DataSection:
    source: DataSource
    splits: Mapping[str, SplitSummary]
    tokens: TokenLengths
    max_length_setting: int | str  # preprocessing.global_max_sequence_length
    tokens_to_train: int  # over the whole run
    target_tokens_to_train: int  # answer tokens, which the loss covers

    @property
    def truncated_rows(self) -> int:
        return sum(s.tokenized.truncated_rows for s in self.splits.values() if s.tokenized)

    @property
    def dropped_rows(self) -> int:
        return sum(s.tokenized.dropped_rows for s in self.splits.values() if s.tokenized)

    @property
    def skipped_rows(self) -> int:
        return sum(s.counts.skipped_rows for s in self.splits.values())

    @property
    def split_hashes(self) -> dict[str, str]:
        return {name: split.hash for name, split in self.splits.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.source.to_json(),
            "splits": {name: split.to_json() for name, split in self.splits.items()},
            "tokens": self.tokens.to_json(),
            "max_length_setting": self.max_length_setting,
            "truncated_rows": self.truncated_rows,
            "dropped_rows": self.dropped_rows,
            "skipped_rows": self.skipped_rows,
            "split_hashes": self.split_hashes,
            "tokens_to_train": self.tokens_to_train,
            "target_tokens_to_train": self.target_tokens_to_train,
        }


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    name: str
    recipe: Mapping[str, Any]  # the resolved recipe, JSON-ready
    training: Training
    estimate: Estimate | UnknownEstimate
    warnings: tuple[str, ...]
    data: DataSection | None  # None: planned from the recipe alone (or from data with no report)

    def to_json(self) -> dict[str, Any]:
        """The plan's one JSON layout (see the module notes)."""
        t = self.training
        out: dict[str, Any] = {
            "name": self.name,
            "recipe": self.recipe,
            "effective_batch_size": t.effective_batch_size,
            "processes": t.processes,
            "base_model": t.base_model.to_json(),
            "lora_trainable_params": t.trainable_params,
            "max_length": t.max_length,
            "steps": t.steps.to_json() if t.steps else None,
            "validation_rows": t.validation_rows,
            "validation_split_rows": t.validation_split_rows,
            "estimate": self.estimate.to_json(),
            "warnings": list(self.warnings),
        }
        if self.data is not None:
            out.update(self.data.to_json())
        return out
