"""LoRA Land's published scores (Zhao et al. 2024, table 12), shipped with the package, so that
`evaluate` can print them beside a recipe's own.

Each task was scored with one metric: rouge (ROUGE-L), accuracy, mae (STS-B's 1 - MAE/5) or
humaneval (pass@1). A recipe that scores its task differently gets numbers that cannot be compared
with these, and the table says so.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

TABLE_FILE = "loraland_table12.csv"

# The recipe metrics that measure what each LoRA Land metric measured.
COMPARABLE = {
    "rouge": frozenset({"rouge_l"}),
    "accuracy": frozenset({"accuracy", "flexible_binary_accuracy", "label_match", "exact_match", "gsm8k"}),
    "mae": frozenset({"stsb"}),
    "humaneval": frozenset(),
}


@dataclass(frozen=True)
class ReferenceScores:
    task: str
    metric: str  # LoRA Land's metric for the task
    mistral7b_ft: float
    mistral7b_base: float  # fine-tuned minus the published lift over the base model
    gpt4: float
    gpt35: float

    def comparable_with(self, metric: str) -> bool:
        return metric in COMPARABLE.get(self.metric, frozenset())

    def rows(self) -> list[tuple[str, float]]:
        return [
            ("LoRA Land: Mistral-7B fine-tuned", self.mistral7b_ft),
            ("LoRA Land: Mistral-7B base", self.mistral7b_base),
            ("LoRA Land: GPT-4", self.gpt4),
            ("LoRA Land: GPT-3.5 Turbo", self.gpt35),
        ]


@functools.cache
def reference_table() -> dict[str, ReferenceScores]:
    text = resources.files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8")
    table = {}
    for row in csv.DictReader(io.StringIO(text)):
        ft = float(row["mistral7b_ft"])
        table[row["task"]] = ReferenceScores(
            task=row["task"],
            metric=row["metric"],
            mistral7b_ft=ft,
            mistral7b_base=round(ft - float(row["mistral7b_ft_lift_over_base"]), 3),
            gpt4=float(row["gpt4"]),
            gpt35=float(row["gpt35_turbo"]),
        )
    return table


def reference_scores(task: str | None) -> ReferenceScores | None:
    """LoRA Land's numbers for `task` (a name from evaluation.reference_task), or None."""
    return reference_table().get(task) if task else None
