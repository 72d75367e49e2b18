"""The task metrics, by the names a recipe's `evaluation.metric` uses.

Each metric scores one model output against its gold answer and says whether it could read the
output at all: an output it cannot read (no label, no number, no JSON) scores 0 and is counted as
unparseable, so a table can tell "wrong" from "answered in the wrong form". The corpus score is the
mean of the example scores, except where the metric is defined over the whole set (macro-F1, and
entity-level F1, which is micro-averaged over entities like seqeval's).

The definitions follow LoRA Land's harness: a "flexible binary" accuracy that maps 1/0, yes/no,
true/false and positive/negative; ROUGE-L F1 as torchmetrics' `rougeL_fmeasure` computes it (the
`rouge_score` package, same tokenizer, no stemming); STS-B as 1 - |pred - gold| / 5; GSM8K by the
last number of the answer.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Characters that may wrap an answer without changing it: "Positive." or '"yes"'.
_WRAPPING = " \t\n\r\"'`.,;:!?()[]{}*"
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_TRUE_WORDS = frozenset({"1", "yes", "true", "positive"})
_FALSE_WORDS = frozenset({"0", "no", "false", "negative"})


@dataclass(frozen=True)
class Score:
    """One example's score (0..1) and whether the metric could read the output."""

    value: float
    parsed: bool = True


@dataclass(frozen=True)
class Metric:
    """A named metric, bound to the task's labels where it needs them.

    `check_gold` returns why a gold answer cannot be scored (a data or recipe mistake, reported
    before any generation starts), or None.
    """

    name: str
    score: Callable[[str, str], Score]
    aggregate: Callable[[Sequence[str], Sequence[str], Sequence[Score]], float] = field(
        default=lambda golds, outputs, scores: _mean([s.value for s in scores])
    )
    check_gold: Callable[[str], str | None] = field(default=lambda gold: None)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def normalize(text: str) -> str:
    """Case-folded, whitespace collapsed, wrapping punctuation removed."""
    return " ".join(text.casefold().split()).strip(_WRAPPING)


# --- labels -----------------------------------------------------------------------------------


def _bounded(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is a whole word (or words): no letter or digit on either side."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not before.isalnum() and not after.isalnum()


def parse_label(output: str, labels: Sequence[str]) -> str | None:
    """The label an output answers with: the whole output, or the label it starts with (longest
    first, so `non-toxic` is not read as `non`). None when it starts with no label."""
    text = normalize(output)
    by_length = sorted(labels, key=lambda label: len(normalize(label)), reverse=True)
    for label in by_length:
        if text == normalize(label):
            return label
    for label in by_length:
        norm = normalize(label)
        if norm and text.startswith(norm) and _bounded(text, 0, len(norm)):
            return label
    return None


def find_label(output: str, labels: Sequence[str]) -> str | None:
    """The label that occurs first anywhere in the output as whole words (the longer one when two
    start at the same place). None when no label occurs."""
    text = " ".join(output.casefold().split())
    best: tuple[int, int, str] | None = None
    for label in labels:
        norm = normalize(label)
        if not norm:
            continue
        start = text.find(norm)
        while start >= 0 and not _bounded(text, start, start + len(norm)):
            start = text.find(norm, start + 1)
        if start >= 0 and (best is None or (start, -len(norm)) < (best[0], best[1])):
            best = (start, -len(norm), label)
    return best[2] if best else None


def binary_value(text: str, labels: Sequence[str]) -> bool | None:
    """LoRA Land's flexible binary reading: 1/yes/true/positive are True, 0/no/false/negative
    False (the whole answer or its first word). For other two-label tasks, the second label of
    output.labels is True (e.g. [non-toxic, toxic])."""
    norm = normalize(text)
    first = re.split(r"[^\w]+", norm, maxsplit=1)[0] if norm else ""
    for candidate in (norm, first):
        if candidate in _TRUE_WORDS:
            return True
        if candidate in _FALSE_WORDS:
            return False
    if len(labels) == 2:
        label = parse_label(text, labels)
        if label is not None:
            return label == labels[1]
    return None


def _label_metric(
    labels: Sequence[str], read: Callable[[str, Sequence[str]], str | None]
) -> Callable[[str, str], Score]:
    def score(output: str, gold: str) -> Score:
        predicted = read(output, labels)
        if predicted is None:
            return Score(0.0, parsed=False)
        return Score(1.0 if normalize(predicted) == normalize(gold) else 0.0)

    return score


def _gold_is_label(labels: Sequence[str]) -> Callable[[str], str | None]:
    known = {normalize(label) for label in labels}

    def check(gold: str) -> str | None:
        if not labels:
            return "this metric needs output.labels"
        return None if normalize(gold) in known else f"{gold!r} is not one of output.labels ({', '.join(labels)})"

    return check


def accuracy(labels: Sequence[str]) -> Metric:
    return Metric("accuracy", _label_metric(labels, parse_label), check_gold=_gold_is_label(labels))


def label_match(labels: Sequence[str]) -> Metric:
    return Metric("label_match", _label_metric(labels, find_label), check_gold=_gold_is_label(labels))


def flexible_binary_accuracy(labels: Sequence[str]) -> Metric:
    def score(output: str, gold: str) -> Score:
        predicted = binary_value(output, labels)
        if predicted is None:
            return Score(0.0, parsed=False)
        return Score(1.0 if predicted == binary_value(gold, labels) else 0.0)

    def check(gold: str) -> str | None:
        if binary_value(gold, labels) is None:
            return f"{gold!r} is not a binary answer (1/0, yes/no, true/false, positive/negative, or one of two labels)"
        return None

    return Metric("flexible_binary_accuracy", score, check_gold=check)


def macro_f1(labels: Sequence[str]) -> Metric:
    """F1 per label, averaged over the labels that occur in the gold answers or the predictions.
    An unparseable output is a miss for its gold label and a false alarm for none."""

    def aggregate(golds: Sequence[str], outputs: Sequence[str], scores: Sequence[Score]) -> float:
        pairs = [
            (parse_label(gold, labels), parse_label(output, labels))
            for gold, output in zip(golds, outputs, strict=True)
        ]
        present = {g for g, _ in pairs} | {p for _, p in pairs if p is not None}
        f1s = []
        for label in labels:
            if label not in present:
                continue
            tp = sum(1 for g, p in pairs if g == label and p == label)
            fp = sum(1 for g, p in pairs if g != label and p == label)
            fn = sum(1 for g, p in pairs if g == label and p != label)
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return _mean(f1s)

    return Metric("macro_f1", _label_metric(labels, parse_label), aggregate, _gold_is_label(labels))


# --- text -------------------------------------------------------------------------------------


def exact_match(labels: Sequence[str] = ()) -> Metric:
    """The whole output equals the gold answer, ignoring case, spacing and wrapping punctuation."""

    def score(output: str, gold: str) -> Score:
        return Score(1.0 if normalize(output) == normalize(gold) else 0.0)

    return Metric("exact_match", score)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1(output: str, gold: str) -> float:
    """ROUGE-L F1 of one output (rouge_score's tokenizer, no stemming: torchmetrics' defaults)."""
    return float(_rouge_scorer().score(gold, output)["rougeL"].fmeasure)


def rouge_l(labels: Sequence[str] = ()) -> Metric:
    return Metric("rouge_l", lambda output, gold: Score(rouge_l_f1(output, gold)))


# --- numbers ----------------------------------------------------------------------------------


def numbers(text: str) -> list[float]:
    """Every number written in `text`, thousands separators allowed (1,234.5)."""
    found = []
    for match in _NUMBER.findall(text):
        cleaned = match.replace(",", "")
        try:
            found.append(float(cleaned))
        except ValueError:
            continue
    return found


def stsb(labels: Sequence[str] = ()) -> Metric:
    """1 - |pred - gold| / 5 with the first number of the output, clipped to STS-B's 0..5 scale."""

    def score(output: str, gold: str) -> Score:
        found = numbers(output)
        if not found:
            return Score(0.0, parsed=False)
        predicted = min(max(found[0], 0.0), 5.0)
        return Score(max(0.0, 1.0 - abs(predicted - numbers(gold)[0]) / 5.0))

    def check(gold: str) -> str | None:
        return None if numbers(gold) else f"{gold!r} holds no number"

    return Metric("stsb", score, check_gold=check)


def gsm8k(labels: Sequence[str] = ()) -> Metric:
    """Correct when the last number of the output equals the last number of the gold answer
    (GSM8K's answers end in `#### 72`)."""

    def score(output: str, gold: str) -> Score:
        found = numbers(output)
        if not found:
            return Score(0.0, parsed=False)
        return Score(1.0 if abs(found[-1] - numbers(gold)[-1]) < 1e-6 else 0.0)

    def check(gold: str) -> str | None:
        return None if numbers(gold) else f"{gold!r} holds no number"

    return Metric("gsm8k", score, check_gold=check)


# --- JSON -------------------------------------------------------------------------------------


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object an output holds: the whole output, or from its first `{` to its last `}`
    (models like to add a sentence around it)."""
    stripped = text.strip()
    candidates = [stripped]
    start, end = stripped.find("{"), stripped.rfind("}")
    if 0 <= start < end:
        candidates.append(stripped[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def entities(text: str) -> Counter[tuple[str, str]] | None:
    """The (type, text) entities of an NER answer `{"person": ["Ada"], ...}`, as a multiset; a
    type may also hold a single string. None when the output is not such an object."""
    value = parse_json_object(text)
    if value is None:
        return None
    found: Counter[tuple[str, str]] = Counter()
    for kind, items in value.items():
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            return None
        for item in items:
            if item.strip():
                found[(normalize(kind), " ".join(item.casefold().split()))] += 1
    return found


def _entity_counts(output: str, gold: str) -> tuple[int, int, int, bool]:
    """True positives, false positives, false negatives, and whether the output was read."""
    expected = entities(gold) or Counter()
    predicted = entities(output)
    if predicted is None:
        return 0, 0, sum(expected.values()), False
    tp = sum((predicted & expected).values())
    return tp, sum(predicted.values()) - tp, sum(expected.values()) - tp, True


def _f1(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def ner_f1(labels: Sequence[str] = ()) -> Metric:
    """Entity-level F1 of NER answers written as JSON. An example's score is its own F1; the corpus
    score is micro-averaged over all entities."""

    def score(output: str, gold: str) -> Score:
        tp, fp, fn, parsed = _entity_counts(output, gold)
        return Score(_f1(tp, fp, fn) if parsed else 0.0, parsed)

    def aggregate(golds: Sequence[str], outputs: Sequence[str], scores: Sequence[Score]) -> float:
        totals = [0, 0, 0]
        for gold, output in zip(golds, outputs, strict=True):
            for i, n in enumerate(_entity_counts(output, gold)[:3]):
                totals[i] += n
        return _f1(*totals) if golds else 0.0

    def check(gold: str) -> str | None:
        return None if entities(gold) is not None else f"{gold[:60]!r} is not a JSON object of entity lists"

    return Metric("ner_f1", score, aggregate, check)


def json_validity(labels: Sequence[str] = ()) -> Metric:
    """1 when the whole output parses as JSON (the gold answer is not consulted)."""

    def score(output: str, gold: str) -> Score:
        try:
            json.loads(output)
        except ValueError:
            return Score(0.0, parsed=False)
        return Score(1.0)

    return Metric("json_validity", score)


METRICS: dict[str, Callable[[Sequence[str]], Metric]] = {
    "accuracy": accuracy,
    "flexible_binary_accuracy": flexible_binary_accuracy,
    "exact_match": exact_match,
    "label_match": label_match,
    "macro_f1": macro_f1,
    "rouge_l": rouge_l,
    "stsb": stsb,
    "gsm8k": gsm8k,
    "ner_f1": ner_f1,
    "json_validity": json_validity,
}


def metric_name(metric: str | None, output_type: str) -> str:
    """The recipe's metric; when it names none, accuracy for category outputs, rouge_l for text."""
    if metric is not None:
        return metric
    return "accuracy" if output_type == "category" else "rouge_l"


def build_metric(name: str, labels: Sequence[str] = ()) -> Metric:
    return METRICS[name](tuple(labels))
