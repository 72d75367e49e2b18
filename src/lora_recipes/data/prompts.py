"""The prompt compiler: a row becomes (prompt, target) text.

    prompt = few-shot block + template rendered with the row
    few-shot block = each example as template + target_prefix + its target, every one followed by
                     prompt.example_separator
    target = the output column's value as text; for category outputs mapped through
             output.label_map (raw value as text -> label), or the value itself when it is a label

The target prefix is not part of the target here: it starts the answer's tokens (see tokens.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lora_recipes.recipe.template import Template, parse_template, render_value
from lora_recipes.recipe.types import Output, Prompt


class UnknownLabel(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def label_key(value: Any) -> str:
    """A raw category value as label_map keys write it. Integral floats lose their `.0`: a CSV
    column of 0/1 with one empty cell reads as 0.0/1.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return render_value(value)


def target_text(value: Any, output: Output) -> str | None:
    """The gold answer of a row, or None when it has none (null, empty or only whitespace).
    Raises `UnknownLabel` for a category value that is neither mapped nor a label."""
    if value is None:
        return None
    if output.type == "category":
        key = label_key(value)
        if not key.strip():
            return None
        if key in output.label_map:
            return output.label_map[key]
        if key in output.labels:
            return key
        raise UnknownLabel(key)
    text = render_value(value)
    return text if text.strip() else None


@dataclass(frozen=True)
class PromptCompiler:
    template: Template
    output: Output
    separator: str
    block: str = ""  # the rendered few-shot examples, each followed by the separator

    @classmethod
    def from_recipe(cls, prompt: Prompt, output: Output) -> PromptCompiler:
        return cls(parse_template(prompt.template), output, prompt.example_separator)

    def with_examples(self, examples: Sequence[Mapping[str, Any]], targets: Sequence[str]) -> PromptCompiler:
        shots = [
            self.template.render(row) + self.output.target_prefix + t for row, t in zip(examples, targets, strict=True)
        ]
        return PromptCompiler(self.template, self.output, self.separator, "".join(s + self.separator for s in shots))

    def prompt(self, row: Mapping[str, Any]) -> str:
        return self.block + self.template.render(row)

    def prompts(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        block, render = self.block, self.template.render
        return [block + render(row) for row in rows]

    def answer(self, target: str) -> str:
        """The text the model learns to continue the prompt with (before EOS)."""
        return self.output.target_prefix + target
