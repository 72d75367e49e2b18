"""The resolved recipe as typed, frozen objects.

Fields mirror `schemas/recipe.schema.json` one to one (a test keeps them in step) and carry no
defaults of their own: a `Recipe` is only ever built from a mapping whose defaults the schema
filled in. Lists become tuples and mappings read-only views, so nothing downstream can change a
recipe by accident.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelParameters:
    revision: str | None
    gguf_file: str | None
    hub_id: str | None
    trust_remote_code: bool
    dtype: str


@dataclass(frozen=True)
class Quantization:
    bits: int | None
    bnb_4bit_quant_type: str
    bnb_4bit_use_double_quant: bool
    bnb_4bit_compute_dtype: str
    llm_int8_threshold: float


@dataclass(frozen=True)
class Adapter:
    type: str
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    bias: str


@dataclass(frozen=True)
class Retrieval:
    type: str
    k: int


@dataclass(frozen=True)
class Prompt:
    template: str
    examples: tuple[Mapping[str, Any], ...]
    retrieval: Retrieval
    example_separator: str
    chat_template: str
    system: str | None


@dataclass(frozen=True)
class Output:
    column: str
    type: str
    labels: tuple[str, ...]
    label_map: Mapping[str, str]
    target_prefix: str


@dataclass(frozen=True)
class Splits:
    train: str
    validation: str | None
    test: str | None


@dataclass(frozen=True)
class SplitRule:
    type: str
    column: str
    validation_fraction: float
    test_fraction: float


@dataclass(frozen=True)
class RowCounts:
    train: int | None
    validation: int | None
    test: int | None


@dataclass(frozen=True)
class ColumnSpec:
    from_: str
    op: str
    separator: str
    markers: str
    index: str | None
    tags: str | None
    tag_names: tuple[str, ...]
    entity_types: Mapping[str, str]
    digits: int


@dataclass(frozen=True)
class Data:
    dataset: str
    config: str | None
    revision: str | None
    columns: Mapping[str, ColumnSpec]
    splits: Splits
    split: SplitRule
    evaluation_split: str
    evaluation_size: int
    max_rows: RowCounts
    expected_rows: RowCounts
    expected_tokens: int | None


@dataclass(frozen=True)
class Preprocessing:
    global_max_sequence_length: str | int


@dataclass(frozen=True)
class LearningRateScheduler:
    decay: str
    warmup_fraction: float


@dataclass(frozen=True)
class Optimizer:
    type: str
    betas: tuple[float, ...]
    eps: float
    weight_decay: float


@dataclass(frozen=True)
class GradientClipping:
    clipglobalnorm: float | None


@dataclass(frozen=True)
class Trainer:
    type: str
    epochs: float
    train_steps: int | None
    max_train_steps: int
    batch_size: int
    eval_batch_size: int | None
    validation_max_rows: int | None
    gradient_accumulation_steps: int
    learning_rate: float
    learning_rate_scheduler: LearningRateScheduler
    optimizer: Optimizer
    gradient_clipping: GradientClipping
    eval_steps: int
    early_stop: int
    steps_per_checkpoint: int
    checkpoints_to_keep: int
    group_by_length: bool
    enable_gradient_checkpointing: bool
    device: str
    report_to: tuple[str, ...]


@dataclass(frozen=True)
class Tracking:
    project: str
    run_name: str | None
    uri: str | None
    artifacts: bool


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]


@dataclass(frozen=True)
class EndpointSettings:
    concurrency: int
    timeout: float
    retries: int
    backoff: float


@dataclass(frozen=True)
class Evaluation:
    metric: str | None
    mode: str
    batch_size: int
    endpoints: EndpointSettings
    reference_task: str | None


@dataclass(frozen=True)
class Serving:
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Cost:
    gpu: str
    price_per_hour_usd: float | None


@dataclass(frozen=True)
class Recipe:
    version: int
    name: str | None
    description: str | None
    license: str | None
    seed: int
    base_model: str
    model_parameters: ModelParameters
    quantization: Quantization
    adapter: Adapter
    prompt: Prompt
    output: Output
    data: Data
    preprocessing: Preprocessing
    trainer: Trainer
    tracking: Tracking
    generation: Generation
    evaluation: Evaluation
    serving: Serving
    cost: Cost
    output_directory: str


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


def schema_key(field_name: str) -> str:
    """Dataclass field names that would clash with Python keywords end in `_` (`from_`)."""
    return field_name[:-1] if field_name.endswith("_") else field_name


def _entry_type(hint: Any) -> type | None:
    """The dataclass of the values of a `Mapping[str, SomeDataclass]` hint, if it is one."""
    args = typing.get_args(hint)
    if (
        typing.get_origin(hint) is Mapping
        and len(args) == 2
        and isinstance(args[1], type)
        and dataclasses.is_dataclass(args[1])
    ):
        return args[1]
    return None


@functools.cache
def _field_plan(cls: Any) -> tuple[tuple[str, Any, type | None], ...]:
    """(field name, type hint, entry dataclass of a mapping hint) per field; resolving string
    annotations is slow, so it is done once per class."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name], _entry_type(hints[f.name])) for f in dataclasses.fields(cls))


def build(cls: Any, mapping: Mapping[str, Any]) -> Any:
    """Build dataclass `cls` from a validated, defaults-filled mapping."""
    kwargs = {}
    for name, hint, entry in _field_plan(cls):
        value = mapping.get(schema_key(name))
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kwargs[name] = build(hint, value or {})
        elif entry is not None:
            kwargs[name] = types.MappingProxyType({k: build(entry, v) for k, v in (value or {}).items()})
        elif hint in (float, float | None) and isinstance(value, int) and not isinstance(value, bool):
            kwargs[name] = float(value)
        else:
            kwargs[name] = _freeze(value)
    return cls(**kwargs)


def dataclass_tree(cls: type[Any] = Recipe) -> dict[str, Any]:
    """Field names of `cls`, nested like the schema's properties (for the mirror test)."""
    hints = typing.get_type_hints(cls)
    tree: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        entry = _entry_type(hint)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            tree[schema_key(f.name)] = dataclass_tree(hint)
        elif entry is not None:
            tree[schema_key(f.name)] = {"*": dataclass_tree(entry)}
        else:
            tree[schema_key(f.name)] = None
    return tree
