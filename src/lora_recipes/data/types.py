"""The shapes the data pipeline hands to training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100  # label value that the loss skips (prompt tokens, padding)


@dataclass(frozen=True)
class Example:
    """One rendered row: the full prompt (few-shot block included) and the gold answer text
    (label text for category outputs; without target prefix and EOS)."""

    row: int  # position of the row in its split, in source order
    prompt: str
    target: str


@dataclass
class TokenizedSplit:
    """Token ids of prompt + target_prefix + target + EOS per row, already cut to the max length
    (prompt tokens removed from the left when too long; the answer is never cut)."""

    name: str
    input_ids: list[list[int]]
    prompt_lengths: list[int]  # leading tokens that are prompt: masked out of the loss
    rows: list[int]  # source row of each example (rows that were dropped are absent)
    truncated_rows: int = 0
    dropped_rows: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def labels(self, i: int) -> list[int]:
        ids = self.input_ids[i]
        p = self.prompt_lengths[i]
        return [IGNORE_INDEX] * p + ids[p:]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


@dataclass
class PreparedData:
    """Everything training needs from the data, plus what `plan` reports about it."""

    train: TokenizedSplit
    validation: TokenizedSplit | None
    max_length: int
    split_hashes: dict[str, str]  # content hash of every split, recorded in the run manifest
    report: dict[str, Any] = field(default_factory=dict)  # plan's data section (JSON-ready)


@dataclass(frozen=True)
class EvaluationSet:
    """The fixed evaluation subset: the first `evaluation_size` rows (with a gold answer) of the
    evaluation split, in source order, as the model will see them."""

    split: str  # train, validation or test
    examples: list[Example]
    hash: str  # of exactly these prompts and targets: two runs scored the same questions iff equal
    labels: tuple[str, ...]  # label texts of a category output; empty for text outputs
    source: str = ""  # where the rows came from (file or hub split)
    skipped_rows: int = 0  # rows of the split without a gold answer, left out
