"""Local model outputs in batches: generation (left-padded, greedy by default) and label ranking.

Prompts are sorted by length before batching, so a batch wastes little compute on padding, and put
back in order afterwards. Both paths tokenize exactly as training does (`data.tokens.encode`): the
prompt with the tokenizer's special tokens, the answer (target prefix + text) without, concatenated;
with a chat template (`data.chat.PromptFormat`, passed as `fmt`) the prompt is first wrapped in the
template's user turn and a label's tokens are its assistant turn.

torch is imported inside the functions: `finish_output` is shared with the endpoint client, which
must not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lora_recipes.data.chat import PromptFormat, raw_format
from lora_recipes.data.tokens import encode
from lora_recipes.recipe.types import Generation

OnBatch = Callable[[list[int], list[Any]], None]


# Decoding settings are the recipe's `generation` section as it stands (a flat, frozen value).
Decoding = Generation


def finish_output(text: str, stop: Sequence[str], target_prefix: str) -> str:
    """A raw completion as the answer: cut before the first stop string, without the leading
    target prefix (training taught the model to start its answer with it)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    text = text[:cut]
    return text[len(target_prefix) :] if target_prefix and text.startswith(target_prefix) else text


def encode_prompts(tokenizer: Any, prompts: Sequence[str], fmt: PromptFormat | None = None) -> list[list[int]]:
    """Prompt token ids exactly as training has them (the data pipeline's own tokenization), in
    the prompt format `fmt` (raw text when None)."""
    if fmt is None or not fmt.applied:
        return encode(tokenizer, list(prompts), [""] * len(prompts)).prompts
    return encode(tokenizer, fmt.prompts(prompts), [""] * len(prompts), prompt_special=False).prompts


def encode_answers(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Answer token ids (target prefix + text) as training has them, without the final EOS."""
    return [ids[:-1] for ids in encode(tokenizer, [""] * len(texts), list(texts)).answers]


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS of the tokenizer (what training appends) and of the model's generation config."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(configured if isinstance(configured, list) else [configured])
    return list(dict.fromkeys(i for i in ids if i is not None))


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so running out of memory
    shows on the first batch, not the last)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    decoding: Decoding,
    *,
    batch_size: int,
    seed: int = 0,
    on_batch: OnBatch | None = None,
    fmt: PromptFormat | None = None,
) -> list[str]:
    """Raw completions of `prompts` (special tokens dropped, not yet cut at stop strings: see
    `finish_output`). Generation of a row ends at EOS, at a stop string, or after
    `max_new_tokens`. `on_batch(indices, completions)` is called after every batch. `fmt` wraps
    the prompts in a chat template (None: raw text)."""
    import torch

    encoded = encode_prompts(tokenizer, prompts, fmt)
    eos = _eos_ids(model, tokenizer)
    options: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos,
        "num_beams": 1,
        "repetition_penalty": 1.0,
    }
    if decoding.temperature > 0:
        options.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p, top_k=0)
        torch.manual_seed(seed)
    else:
        options["do_sample"] = False
    if decoding.stop:
        options.update(stop_strings=list(decoding.stop), tokenizer=tokenizer)
    device = _device(model)
    completions: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches([len(e) for e in encoded], batch_size):
                ids, mask = _left_pad([encoded[i] for i in batch], tokenizer.pad_token_id, device)
                out = model.generate(input_ids=ids, attention_mask=mask, **options)
                texts = [_decode_new(tokenizer, row.tolist(), eos) for row in out[:, ids.shape[1] :]]
                for i, text in zip(batch, texts, strict=True):
                    completions[i] = text
                if on_batch is not None:
                    on_batch(batch, texts)
    finally:
        model.train(was_training)
    return completions


def _decode_new(tokenizer: Any, tokens: list[int], eos: list[int]) -> str:
    """Decode generated tokens up to the first EOS (what follows is padding)."""
    end = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
    return str(tokenizer.decode(tokens[:end], skip_special_tokens=True))


@dataclass(frozen=True)
class Ranked:
    """The most likely label and the log-likelihood of every label, in label order."""

    label: str
    log_likelihoods: tuple[float, ...]


def label_continuations(
    tokenizer: Any, labels: Sequence[str], target_prefix: str, fmt: PromptFormat | None = None
) -> list[list[int]]:
    """Token ids of target prefix + label for each label. When one label's tokens begin another's,
    the answer's end is appended to all (EOS; with a chat template, the end of the assistant turn),
    so that the shorter label does not win by construction (a prefix is always at least as likely
    as what extends it)."""
    fmt = fmt if fmt is not None else raw_format(target_prefix)
    conts = encode_answers(tokenizer, fmt.open_answers(labels))
    ambiguous = any(a != b and b[: len(a)] == a for a in conts for b in conts)
    if not ambiguous:
        return conts
    if not fmt.applied:
        return [[*c, tokenizer.eos_token_id] for c in conts]
    closed = encode(tokenizer, [""] * len(labels), fmt.answers(labels), append_eos=fmt.append_eos).answers
    return [list(c) for c in closed]


def rank(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    target_prefix: str,
    batch_size: int,
    on_batch: OnBatch | None = None,
    fmt: PromptFormat | None = None,
) -> list[Ranked]:
    """For each prompt, the label whose answer tokens have the highest summed log-probability
    (ties go to the earlier label). `batch_size` counts prompt-label pairs per forward pass;
    `on_batch(prompt indices, Ranked results)` is called as prompts complete."""
    import torch

    encoded = encode_prompts(tokenizer, prompts, fmt)
    conts = label_continuations(tokenizer, labels, target_prefix, fmt)
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(labels))]
    scores: list[list[float | None]] = [[None] * len(labels) for _ in prompts]
    results: list[Ranked | None] = [None] * len(prompts)
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _batches([len(encoded[i]) + len(conts[j]) for i, j in pairs], batch_size):
                rows = [encoded[pairs[k][0]] + conts[pairs[k][1]] for k in batch]
                ids, mask = _left_pad(rows, tokenizer.pad_token_id, device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                keep = max(len(conts[pairs[k][1]]) for k in batch) + 1
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
                logprobs = logits[:, -keep:].float().log_softmax(-1)
                done: list[int] = []
                for row, k in enumerate(batch):
                    i, j = pairs[k]
                    cont = conts[j]
                    # With left padding every row ends at the last column: the answer's tokens are
                    # the last len(cont) columns, each predicted by the column before it.
                    targets = torch.tensor(cont, device=logprobs.device)
                    predicted_by = logprobs[row, keep - len(cont) - 1 : keep - 1]
                    scores[i][j] = float(predicted_by.gather(-1, targets[:, None]).sum())
                    if all(s is not None for s in scores[i]):
                        values = tuple(float(s) for s in scores[i] if s is not None)
                        results[i] = Ranked(labels[max(range(len(labels)), key=lambda n: (values[n], -n))], values)
                        done.append(i)
                if on_batch is not None and done:
                    on_batch(done, [results[i] for i in done])
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]
