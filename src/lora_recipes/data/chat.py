"""Prompt formats: raw text, or the prompt and answer as turns of a chat template.

    prompt.chat_template: none        raw text: the prompt, then target_prefix + target + EOS
    prompt.chat_template: auto        chat turns when the base model is instruction-tuned (its name
                                      says so) and its tokenizer has a chat template; else raw text
    prompt.chat_template: tokenizer   the tokenizer's own template (an error when it has none)
    prompt.chat_template: FILE.jinja  that template (the loader made the path absolute)

With a chat template:

    prompt = template([system], user: raw prompt, generation prompt)
    answer = what the template writes after that for the assistant turn: the target prefix without
             its leading whitespace, the target, and the end of the turn up to and including the
             tokenizer's EOS text (when the end of turn has no EOS, the EOS token is appended)

The rendered prompt already holds whatever special tokens the template writes (a BOS for Llama
and Mistral templates), so it is tokenized without the tokenizer's own, as transformers does for
`apply_chat_template(tokenize=True)`. Training, the cut-off, evaluation, rank mode and predict all
go through one `PromptFormat`, so they see the same text.

Rendering every row with Jinja costs about 0.1 ms, a minute for a few hundred thousand rows: the
template is rendered once with placeholder turns, and each row is assembled from the pieces around
them. That is checked on the first rows of every batch against the real rendering; a template that
does more with the content than trim it (or whose output is not prompt-then-answer) is rendered
row by row instead.

Nothing here imports torch or transformers: tokenizers come in from the caller.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_recipes.errors import UserError
from lora_recipes.recipe.types import Recipe

# Model names that mark an instruction-tuned model: Mistral-7B-Instruct, Llama-2-7b-chat,
# gemma-2-2b-it, zephyr-7b-sft, tulu-2-dpo, ...
INSTRUCT_NAME = re.compile(r"(?i)(?:^|[^a-z0-9])(?:instruct|chat|it|sft|dpo|rlhf)(?:[^a-z0-9]|$)")

# Placeholder turns: text no template writes by itself, and that trimming or a change of case
# leaves as it is (control characters and digits), so a template that does either is still seen.
_USER = "\x01\x027351\x02\x01"
_ANSWER = "\x01\x028642\x02\x01"
# Rows of each batch rendered for real to check the assembled ones (and the fast path with them).
CHECK_ROWS = 8

Render = Callable[[list[dict[str, str]], bool], str]


def instruct_model(base_model: str, gguf_file: str | None) -> bool:
    """Whether the model's name (last part of its id or path, or its GGUF file) marks it as
    instruction-tuned."""
    names = [base_model.rstrip("/").rsplit("/", 1)[-1], *([gguf_file] if gguf_file else [])]
    return any(INSTRUCT_NAME.search(name) for name in names)


def tokenizer_template(tokenizer: Any) -> str | None:
    """The tokenizer's chat template, or None (a dict of named templates gives its `default`)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _jinja_render(template: str, tokenizer: Any) -> Render:
    """Render with a sandboxed Jinja environment, as transformers does, for tokenizers that have
    no `apply_chat_template` (plan's approximate token counter)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    specials = {
        name: str(getattr(tokenizer, name, None) or "") for name in ("bos_token", "eos_token", "pad_token", "unk_token")
    }

    def render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(compiled.render(messages=messages, add_generation_prompt=generation_prompt, **specials))

    return render


def _renderer(template: str, tokenizer: Any) -> Render:
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is None:
        return _jinja_render(template, tokenizer)

    def render(messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(apply(messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt))

    return render


@dataclass(frozen=True)
class Pieces:
    """A wrapped turn assembled around its content: head + content + tail (`strip`: the template
    trims the content first)."""

    head: str
    tail: str
    strip: bool

    def wrap(self, content: str) -> str:
        return self.head + (content.strip() if self.strip else content) + self.tail


@dataclass(frozen=True)
class PromptFormat:
    """How a raw prompt and a target become the texts that are tokenized.

    `applied` is False for raw text. `prompt_special`: the tokenizer adds its own special tokens to
    the prompt (raw text only). `append_eos`: the EOS token follows the answer's tokens (raw text,
    and templates whose end of turn has no EOS). `head`: the text every wrapped prompt starts
    with, kept when a long prompt is cut from the left (system message and turn header)."""

    setting: str
    applied: bool
    reason: str
    target_prefix: str
    prompt_special: bool = True
    append_eos: bool = True
    template: str | None = None
    system: str | None = None
    head: str = ""
    user: Pieces | None = None  # None: prompts are rendered row by row
    answer_pieces: Pieces | None = None
    render: Render | None = field(default=None, compare=False, repr=False)
    eos_text: str | None = None

    # --- the texts ---------------------------------------------------------------------------

    def _messages(self, prompt: str, answer: str | None = None) -> list[dict[str, str]]:
        return conversation(self.system, prompt, answer)

    def content(self, target: str) -> str:
        """The answer as the model writes it, before any end of turn: target prefix + target."""
        return self.target_prefix + target

    def prompt(self, raw: str) -> str:
        return self.prompts([raw])[0]

    def prompts(self, raws: Sequence[str]) -> list[str]:
        if not self.applied:
            return list(raws)
        assert self.render is not None
        if self.user is not None and self._user_fits(raws[:CHECK_ROWS]):
            wrap = self.user.wrap
            return [wrap(r) for r in raws]
        return [self.render(self._messages(r), True) for r in raws]

    def answers(self, targets: Sequence[str]) -> list[str]:
        """Each answer with the end of its turn (raw text: target prefix + target)."""
        if not self.applied:
            return [self.target_prefix + t for t in targets]
        assert self.answer_pieces is not None
        wrap = self.answer_pieces.wrap
        return [wrap(self.content(t)) for t in targets]

    def open_answers(self, targets: Sequence[str]) -> list[str]:
        """Each answer without the end of its turn: what a label's tokens are when ranking."""
        if not self.applied:
            return [self.target_prefix + t for t in targets]
        assert self.answer_pieces is not None
        head, strip = self.answer_pieces.head, self.answer_pieces.strip
        return [head + (self.content(t).strip() if strip else self.content(t)) for t in targets]

    def pairs(self, raws: Sequence[str], targets: Sequence[str]) -> tuple[list[str], list[str]]:
        """Wrapped prompts and answers of training rows. The assembled answers are checked on the
        first rows against the real rendering of the whole conversation; when they differ, every
        row is rendered."""
        prompts = self.prompts(raws)
        if not self.applied:
            return prompts, self.answers(targets)
        answers = self.answers(targets)
        checked = list(zip(raws[:CHECK_ROWS], prompts[:CHECK_ROWS], answers[:CHECK_ROWS], targets, strict=False))
        if all(self._answer_of(r, p, t) == a for r, p, a, t in checked):
            return prompts, answers
        return prompts, [self._answer_of(r, p, t) for r, p, t in zip(raws, prompts, targets, strict=True)]

    def _user_fits(self, raws: Sequence[str]) -> bool:
        assert self.user is not None and self.render is not None
        return all(self.user.wrap(r) == self.render(self._messages(r), True) for r in raws)

    def _answer_of(self, raw: str, prompt: str, target: str) -> str:
        """The answer of one row from the real rendering of its conversation."""
        assert self.render is not None
        full = self.render(self._messages(raw, self.content(target)), False)
        if not full.startswith(prompt):
            raise UserError(not_prompt_then_answer(self.setting))
        return _end_turn(full[len(prompt) :], self.eos_text)[0]

    # --- what else depends on it ---------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What a tokenized-data cache or a stored answer depends on beyond the tokenizer's ids."""
        if not self.applied:
            return {"chat_template": "none"}
        text = self.template or ""
        return {
            "chat_template": hashlib.sha256(text.encode()).hexdigest()[:16],
            "system": self.system,
            "target_prefix": self.target_prefix,
        }

    def head_tokens(self, tokenizer: Any, first_prompt_ids: Sequence[int]) -> int | None:
        """How many leading tokens of every wrapped prompt are the template's head (system turn and
        user header), when they tokenize as a prefix of the prompts; None for raw text (the
        tokenizer's own special tokens are the head then)."""
        if not self.applied:
            return None
        if not self.head:
            return 0
        ids = list(tokenizer(self.head, add_special_tokens=False)["input_ids"])
        return len(ids) if list(first_prompt_ids[: len(ids)]) == ids else 0

    def describe(self, raw: str | None = None, target: str | None = None) -> dict[str, Any]:
        """For plan: the setting, what it resolved to and why, and one example as it is tokenized."""
        out: dict[str, Any] = {"chat_template": self.setting, "applied": self.applied, "reason": self.reason}
        if self.applied:
            out["system"] = self.system
        if raw is not None and target is not None:
            prompts, answers = self.pairs([raw], [target])
            out["example"] = {"prompt": prompts[0], "answer": answers[0] + ("<EOS>" if self.append_eos else "")}
        return out


def conversation(system: str | None, user: str, answer: str | None = None) -> list[dict[str, str]]:
    """The messages of one row: the system message (if any), the prompt, the answer (if any)."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def not_prompt_then_answer(setting: str) -> str:
    return (
        f"prompt.chat_template {setting}: the template does not write a conversation as its prompt (with the "
        "generation prompt) followed by the answer, so the loss could not be limited to the answer; use "
        "prompt.chat_template: none or another template"
    )


def _end_turn(rest: str, eos: str | None) -> tuple[str, bool]:
    """The answer text up to and including the first EOS text after it, or without trailing
    whitespace when there is none; and whether the EOS token must still be appended."""
    if eos and eos in rest:
        return rest[: rest.index(eos) + len(eos)], False
    return rest.rstrip(), True


def raw_format(target_prefix: str, setting: str = "none", reason: str = "prompt.chat_template is none") -> PromptFormat:
    return PromptFormat(setting=setting, applied=False, reason=reason, target_prefix=target_prefix)


def _read_template(setting: str) -> str:
    path = Path(setting)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt.chat_template: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"prompt.chat_template: {path}: cannot read the template ({exc})") from None


def _pieces(rendered: Callable[[str], str], marker: str) -> Pieces | None:
    """The text around a turn's content, from renderings with placeholder content; None when the
    template does more with the content than trimming it."""
    plain = rendered(marker)
    if plain.count(marker) != 1:
        return None
    padded = rendered(f" \n{marker}\n ")
    if f" \n{marker}\n " in padded:
        strip = False
    elif padded == plain:
        strip = True
    else:
        return None
    head, tail = plain.split(marker)
    pieces = Pieces(head, tail, strip)
    probe = ' A probe, in Mixed case:\n{x} "quoted" <b>&</b> '
    return pieces if rendered(probe) == pieces.wrap(probe) else None


def prompt_format(recipe: Recipe, tokenizer: Any) -> PromptFormat:
    """The prompt format of a recipe with this tokenizer (the base model's)."""
    setting = recipe.prompt.chat_template
    target_prefix = recipe.output.target_prefix
    if setting == "none":
        return raw_format(target_prefix)
    params = recipe.model_parameters
    if setting in ("auto", "tokenizer"):
        template = tokenizer_template(tokenizer)
        if template is None:
            if getattr(tokenizer, "approximate", False):
                why = "the tokenizer is not available, so its chat template is unknown"
            else:
                why = "the tokenizer has no chat template"
            if setting == "tokenizer":
                raise UserError(
                    f"prompt.chat_template is tokenizer, but {why} ({recipe.base_model}); give a template file "
                    "(prompt.chat_template: FILE.jinja) or use none"
                )
            return raw_format(target_prefix, setting, f"raw text: {why}")
        if setting == "auto" and not instruct_model(recipe.base_model, params.gguf_file):
            return raw_format(
                target_prefix,
                setting,
                "raw text: the base model's name does not mark it as instruction-tuned (use "
                "prompt.chat_template: tokenizer to wrap its prompts anyway)",
            )
        origin = "the tokenizer's chat template"
    else:
        template = _read_template(setting)
        origin = f"the chat template {setting}"
    return chat_format(
        template, tokenizer, setting=setting, origin=origin, system=recipe.prompt.system, target_prefix=target_prefix
    )


def chat_format(
    template: str, tokenizer: Any, *, setting: str, origin: str, system: str | None, target_prefix: str
) -> PromptFormat:
    """A `PromptFormat` that wraps prompts and answers in `template`'s turns."""
    render = _renderer(template, tokenizer)
    eos = getattr(tokenizer, "eos_token", None)
    eos_text = eos if isinstance(eos, str) and eos else None
    lead = target_prefix.lstrip()

    def messages(user: str, answer: str | None = None) -> list[dict[str, str]]:
        return conversation(system, user, answer)

    def user_turn(content: str) -> str:
        return render(messages(content), True)

    def answer_turn(content: str) -> str:
        full = render(messages(_USER, content), False)
        return full[len(prompt) :] if full.startswith(prompt) else ""

    try:
        prompt = render(messages(_USER), True)
        full = render(messages(_USER, _ANSWER), False)
        user = _pieces(user_turn, _USER)
        answer = _pieces(answer_turn, _ANSWER)
    except Exception as exc:  # a template's raise_exception, or a Jinja error: the user's template
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = "with a system message " if system is not None else ""
        raise UserError(f"prompt.chat_template {setting}: {origin} cannot be rendered {what}({first})") from None
    if not full.startswith(prompt) or _ANSWER not in full[len(prompt) :] or _USER not in prompt:
        raise UserError(not_prompt_then_answer(setting))
    if answer is None:  # the template reshapes the answer: fall back to its pieces around the placeholder
        head, tail = full[len(prompt) :].split(_ANSWER, 1)
        answer = Pieces(head, tail, False)
    tail, append_eos = _end_turn(answer.tail, eos_text)
    answer = Pieces(answer.head, tail, answer.strip)
    return PromptFormat(
        setting=setting,
        applied=True,
        reason=f"wrapped in {origin}",
        target_prefix=lead,
        prompt_special=False,
        append_eos=append_eos,
        template=template,
        system=system,
        head=prompt.split(_USER, 1)[0],
        user=user,
        answer_pieces=answer,
        render=render,
        eos_text=eos_text,
    )


def describe_lines(entry: dict[str, Any] | None) -> list[str]:
    """Plan text for the `prompt_format` entry of the data report: what the setting resolved to and
    one example, shown as it is tokenized (special tokens as text, EOS marked)."""
    if not entry:
        return []
    state = "chat template" if entry.get("applied") else "raw text"
    lines = [f"prompt format       {state} (prompt.chat_template: {entry.get('chat_template')}): {entry.get('reason')}"]
    example = entry.get("example")
    if example:
        lines.append("example             the first training row, as it is tokenized:")
        for part in ("prompt", "answer"):
            text = str(example.get(part, ""))
            lines += [f"  {part}:"] + [f"    {line}" for line in text.split("\n")]
    return lines
