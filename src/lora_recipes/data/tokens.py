"""Tokenization and the max-length cut-off.

A row's tokens are `prompt` (tokenized as at inference, with the tokenizer's own special tokens
such as BOS) followed by `answer` = target_prefix + target, tokenized on its own without special
tokens, plus EOS. Tokenizing the two texts apart (as Ludwig does) keeps the boundary exact, so the
loss mask covers precisely the prompt and the model learns the very tokens it must emit after a
prompt tokenized alone. With a chat template (data/chat.py) the prompt is the wrapped user turn,
tokenized without the tokenizer's own special tokens (the template writes them), and the answer
ends with the template's end of turn.

Lengths are counted on the training split: prompt (BOS included), target (prefix, target and EOS)
and total. Percentiles are nearest-rank: pNN is the smallest length that at least NN% of the rows
do not exceed, so p100 is the longest row and `max_length` is a length some row really has.

Cutting a row to `max_length`: a row that fits is kept whole; a longer one loses prompt tokens from
the left (a leading BOS is kept; the answer and the end of the prompt, where the question usually
is, survive) and is counted as truncated; a row whose answer alone leaves no room for a single
prompt token (answer >= max_length) is dropped and counted, since nothing of its prompt would be
left to condition on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lora_recipes.data.types import TokenizedSplit

PERCENTILES = (50, 95, 99)


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of ascending `sorted_values` (not empty)."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_stats(lengths: Sequence[int]) -> dict[str, float | int]:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    stats: dict[str, float | int] = {"min": ordered[0]}
    stats.update({f"p{q}": percentile(ordered, q) for q in PERCENTILES})
    stats["max"] = ordered[-1]
    stats["mean"] = round(sum(ordered) / len(ordered), 2)
    return stats


def resolve_max_length(setting: str | int, totals: Sequence[int]) -> int:
    """`pNN` of the training rows' prompt+answer lengths, or a fixed integer."""
    if isinstance(setting, int):
        return setting
    return percentile(sorted(totals), float(setting[1:]))


def fit(prompt: list[int], answer: list[int], max_length: int, head: int) -> tuple[list[int], int] | None:
    """The row cut to `max_length` and its prompt length, or None when it must be dropped.
    `head` leading prompt tokens (BOS) are kept when the prompt is cut."""
    if len(prompt) + len(answer) <= max_length:
        return prompt + answer, len(prompt)
    room = max_length - len(answer)
    if room < 1:
        return None
    keep_head = min(head, room, len(prompt))
    tail = room - keep_head
    kept = prompt[:keep_head] + (prompt[len(prompt) - tail :] if tail else [])
    return kept + answer, len(kept)


@dataclass(frozen=True)
class Encoded:
    """One split's prompt and answer token ids, before any cut."""

    prompts: list[list[int]]
    answers: list[list[int]]

    @property
    def prompt_lengths(self) -> list[int]:
        return [len(p) for p in self.prompts]

    @property
    def answer_lengths(self) -> list[int]:
        return [len(a) for a in self.answers]

    @property
    def totals(self) -> list[int]:
        return [len(p) + len(a) for p, a in zip(self.prompts, self.answers, strict=True)]


def special_tokens(tokenizer: Any) -> tuple[int, bool]:
    """(leading special tokens the tokenizer adds to a text, whether it also appends EOS)."""
    empty = list(tokenizer("", add_special_tokens=True)["input_ids"])
    head = 1 if empty and empty[0] == tokenizer.bos_token_id else 0
    appends_eos = len(empty) > head and empty[-1] == tokenizer.eos_token_id
    return head, appends_eos


BatchEncoder = Callable[[list[str], bool], list[list[int]]]
SAMPLE_ROWS = 64


def batch_encoder(tokenizer: Any, sample: list[str]) -> BatchEncoder:
    """A function from texts to token ids. The fast tokenizer's Rust backend is called directly
    when that gives the same ids as the tokenizer itself (checked on `sample`, with and without
    special tokens, and only with no truncation or padding set on the backend): it skips the
    wrapper's per-row conversions, about a quarter of the tokenizing time."""

    def wrapper(texts: list[str], special: bool) -> list[list[int]]:
        return list(
            tokenizer(texts, add_special_tokens=special, return_attention_mask=False, verbose=False)["input_ids"]
        )

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return wrapper
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def direct(texts: list[str], special: bool) -> list[list[int]]:
        return [e.ids for e in encode_batch(texts, add_special_tokens=special)]

    same = all(direct(sample, special) == [list(ids) for ids in wrapper(sample, special)] for special in (True, False))
    return direct if same else wrapper


def encode(
    tokenizer: Any, prompts: list[str], answers: list[str], *, prompt_special: bool = True, append_eos: bool = True
) -> Encoded:
    """Batched tokenization of prompts (with special tokens) and answers (without, plus EOS).
    Each distinct answer is tokenized once: category outputs have only a few.

    A prompt wrapped in a chat template already holds its special tokens (`prompt_special`
    False), and an answer whose end of turn holds the EOS text needs none appended (`append_eos`
    False); see data/chat.py."""
    if not prompts:
        return Encoded([], [])
    _, appends_eos = special_tokens(tokenizer)
    run = batch_encoder(tokenizer, prompts[:SAMPLE_ROWS] + answers[:SAMPLE_ROWS])
    prompt_ids = run(prompts, prompt_special)
    if appends_eos and prompt_special:  # the EOS belongs after the answer, not after the prompt
        prompt_ids = [ids[:-1] for ids in prompt_ids]
    eos = [tokenizer.eos_token_id] if append_eos else []
    distinct = list(dict.fromkeys(answers))
    ids_of = dict(zip(distinct, run(distinct, False), strict=True))
    return Encoded(prompt_ids, [ids_of[a] + eos for a in answers])


def cut_split(name: str, encoded: Encoded, rows: list[int], max_length: int, head: int) -> TokenizedSplit:
    input_ids: list[list[int]] = []
    prompt_lengths: list[int] = []
    kept_rows: list[int] = []
    truncated = dropped = 0
    for row, prompt, answer in zip(rows, encoded.prompts, encoded.answers, strict=True):
        result = fit(prompt, answer, max_length, head)
        if result is None:
            dropped += 1
            continue
        ids, p = result
        truncated += len(ids) < len(prompt) + len(answer)
        input_ids.append(ids)
        prompt_lengths.append(p)
        kept_rows.append(row)
    return TokenizedSplit(name, input_ids, prompt_lengths, kept_rows, truncated, dropped)


def computed_tokens(lengths: Sequence[int], batch_size: int, group_by_length: bool) -> int:
    """Tokens one epoch computes, padding included: every batch is padded to its longest row.
    With group_by_length, batches are formed from rows sorted by length (the trainer shuffles
    buckets of similar length, which pads about as little); otherwise in data order."""
    if batch_size == 1:
        return sum(lengths)
    order = sorted(lengths) if group_by_length else list(lengths)
    return sum(
        max(order[i : i + batch_size]) * len(order[i : i + batch_size]) for i in range(0, len(order), batch_size)
    )


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes token ids: its full serialized form
    (vocabulary, merges, normalizer, pre-tokenizer, post-processor) and its special tokens. The
    path it was loaded from does not matter."""
    own = getattr(tokenizer, "identity", None)
    if isinstance(own, str):
        return own
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    head = json.dumps(
        [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id, sorted(tokenizer.all_special_tokens)]
    )
    return hashlib.sha256((head + "\n" + body).encode()).hexdigest()[:32]


def tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
