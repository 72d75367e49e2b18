"""Batched local generation and label ranking on the tiny model, each checked against the plain
one-prompt-at-a-time computation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lora_recipes.evaluation.generation import (
    Decoding,
    _left_pad,
    encode_answers,
    encode_prompts,
    finish_output,
    generate,
    label_continuations,
    rank,
)
from lora_recipes.model import loading as models
from lora_recipes.model.source import ModelSource

PROMPTS = [
    "the movie was",
    "Review: boring and far too long. Sentiment:",
    "a",
    "Question: what is two plus two? Answer:",
    "the acting was wonderful and the movie was great and the acting was",
]
GREEDY = Decoding(max_new_tokens=10, temperature=0.0, top_p=1.0, stop=())


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    source = ModelSource("local", str(tiny_model_dir), None)
    return models.load_base_model(source, dtype="float32"), models.load_tokenizer(source)


def one_at_a_time(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> list[int]:
    """The plain way: one unpadded prompt, model.generate, greedy."""
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return list(out[0, ids.shape[1] :].tolist())


def test_left_padding_puts_every_prompt_against_the_right_edge() -> None:
    ids, mask = _left_pad([[5, 6, 7], [8]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.slow
def test_batched_generation_equals_one_prompt_at_a_time(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    lengths = {len(ids) for ids in encode_prompts(tokenizer, PROMPTS)}
    assert len(lengths) >= 4  # the batches really are padded
    batched = generate(model, tokenizer, PROMPTS, GREEDY, batch_size=3)
    expected = [tokenizer.decode(one_at_a_time(model, tokenizer, p, 10), skip_special_tokens=True) for p in PROMPTS]
    assert batched == expected
    assert len(set(batched)) == len(PROMPTS)  # distinct outputs: a row mix-up would show


@pytest.mark.slow
def test_on_batch_reports_every_prompt_once(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    seen: dict[int, str] = {}
    out = generate(
        model,
        tokenizer,
        PROMPTS,
        GREEDY,
        batch_size=2,
        on_batch=lambda idx, texts: seen.update(zip(idx, texts, strict=True)),
    )
    assert seen == dict(enumerate(out))


@pytest.mark.slow
def test_max_new_tokens_bounds_the_output(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    short = generate(model, tokenizer, PROMPTS, Decoding(3, 0.0, 1.0, ()), batch_size=5)
    for prompt, text in zip(PROMPTS, short, strict=True):
        assert text == tokenizer.decode(one_at_a_time(model, tokenizer, prompt, 3), skip_special_tokens=True)


@pytest.mark.slow
def test_generation_stops_at_eos(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    tokens = one_at_a_time(model, tokenizer, PROMPTS[1], 10)
    # Declare the model's third greedy token its EOS: generation must end right before it.
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = tokens[2]
    try:
        (text,) = generate(model, tokenizer, [PROMPTS[1]], GREEDY, batch_size=1)
    finally:
        model.generation_config.eos_token_id = original
    assert text == tokenizer.decode(tokens[:2], skip_special_tokens=True)


@pytest.mark.slow
def test_generation_stops_at_a_stop_string_and_the_output_is_cut_before_it(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    tokens = [one_at_a_time(model, tokenizer, p, 10) for p in PROMPTS]
    full = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    # A stop string that the first prompt's output reaches within its first five tokens.
    head = tokenizer.decode(tokens[0][:5], skip_special_tokens=True)
    stop = next(ch for ch in reversed(head) if ch.isprintable() and not ch.isspace() and ch != "\ufffd")
    raw = generate(model, tokenizer, PROMPTS, Decoding(10, 0.0, 1.0, (stop,)), batch_size=5)
    assert len(raw[0]) < len(full[0])  # generation ended early, at the stop string
    for text, whole in zip(raw, full, strict=True):
        assert whole.startswith(text)
        assert finish_output(text, (stop,), "") == whole.split(stop)[0]
        if stop in whole:
            assert stop in text


def test_finish_output_cuts_at_the_first_stop_and_drops_the_target_prefix() -> None:
    assert finish_output(" positive\nReview: next", ("\n", "Review:"), " ") == "positive"
    assert finish_output("positive", ("\n",), " ") == "positive"
    assert finish_output(" a ### b", ("###", " a"), "") == ""
    assert finish_output("no stop here", (), " ") == "no stop here"


@pytest.mark.slow
def test_sampling_is_reproducible_with_the_seed(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    hot = Decoding(10, 1.5, 0.95, ())
    a = generate(model, tokenizer, PROMPTS, hot, batch_size=5, seed=7)
    b = generate(model, tokenizer, PROMPTS, hot, batch_size=5, seed=7)
    assert a == b
    assert a != generate(model, tokenizer, PROMPTS, GREEDY, batch_size=5)


def plain_log_likelihood(model: Any, tokenizer: Any, prompt: str, cont: list[int]) -> float:
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0] + cont])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    start = ids.shape[1] - len(cont)
    return sum(float(logprobs[start - 1 + k, t]) for k, t in enumerate(cont))


@pytest.mark.slow
def test_rank_matches_the_unbatched_log_likelihoods(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    labels = ["negative", "positive", "neutral"]
    ranked = rank(model, tokenizer, PROMPTS, labels, target_prefix=" ", batch_size=4)
    conts = label_continuations(tokenizer, labels, " ")
    for prompt, result in zip(PROMPTS, ranked, strict=True):
        expected = [plain_log_likelihood(model, tokenizer, prompt, c) for c in conts]
        assert result.log_likelihoods == pytest.approx(expected, abs=1e-4)
        assert result.label == labels[max(range(3), key=lambda j: expected[j])]


@pytest.mark.slow
def test_rank_scores_eos_when_one_label_begins_another(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    plain = label_continuations(tokenizer, ["negative", "positive"], " ")
    assert plain == encode_answers(tokenizer, [" negative", " positive"])
    assert all(c[-1] != tokenizer.eos_token_id for c in plain)
    pos, positive = encode_answers(tokenizer, [" pos", " positive"])
    assert positive[: len(pos)] == pos  # " pos" is a token prefix of " positive"
    prefixed = label_continuations(tokenizer, ["pos", "positive"], " ")
    assert prefixed == [[*pos, tokenizer.eos_token_id], [*positive, tokenizer.eos_token_id]]
