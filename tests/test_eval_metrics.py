"""Every metric against cases worked out by hand, and ROUGE-L against torchmetrics (the
implementation LoRA Land's harness used) on real sentences."""

from __future__ import annotations

import json

import pytest

from conftest import shared_task_data
from lora_recipes.evaluation.metrics import METRICS, Score, build_metric, metric_name
from lora_recipes.recipe.rules import LABEL_METRICS
from lora_recipes.recipe.schema import load_schema


def corpus(name: str, pairs: list[tuple[str, str]], labels: tuple[str, ...] = ()) -> tuple[float, list[Score]]:
    metric = build_metric(name, labels)
    scores = [metric.score(output, gold) for output, gold in pairs]
    return metric.aggregate([g for _, g in pairs], [o for o, _ in pairs], scores), scores


def test_the_registry_is_the_schema_enum() -> None:
    enum = load_schema()["properties"]["evaluation"]["properties"]["metric"]["enum"]
    assert set(METRICS) == {m for m in enum if m is not None}
    assert set(METRICS) >= LABEL_METRICS


def test_default_metric_follows_the_output_type() -> None:
    assert metric_name(None, "category") == "accuracy"
    assert metric_name(None, "text") == "rouge_l"
    assert metric_name("gsm8k", "text") == "gsm8k"


def test_accuracy_reads_the_label_the_output_starts_with() -> None:
    labels = ("negative", "positive")
    pairs = [
        ("positive", "positive"),  # right
        (" Negative.", "negative"),  # right: case and punctuation do not matter
        ("positive, clearly", "negative"),  # read as positive: wrong
        ("The review is negative", "negative"),  # starts with no label: unparseable
        ("positives", "positive"),  # not the whole word: unparseable
    ]
    value, scores = corpus("accuracy", pairs, labels)
    assert [s.value for s in scores] == [1, 1, 0, 0, 0]
    assert [s.parsed for s in scores] == [True, True, True, False, False]
    assert value == pytest.approx(2 / 5)


def test_accuracy_prefers_the_longer_label() -> None:
    labels = ("non-toxic", "toxic")
    _, scores = corpus("accuracy", [("non-toxic", "non-toxic"), ("toxic", "non-toxic")], labels)
    assert [s.value for s in scores] == [1, 0]


def test_flexible_binary_accuracy_maps_the_loraland_words() -> None:
    labels = ("negative", "positive")
    pairs = [
        ("1", "positive"),
        ("yes", "positive"),
        ("True.", "positive"),
        ("Positive", "1"),
        ("no", "negative"),
        ("0", "negative"),
        ("false", "positive"),  # read, wrong
        ("maybe", "positive"),  # unparseable
    ]
    value, scores = corpus("flexible_binary_accuracy", pairs, labels)
    assert [s.value for s in scores] == [1, 1, 1, 1, 1, 1, 0, 0]
    assert [s.parsed for s in scores][-2:] == [True, False]
    assert value == pytest.approx(6 / 8)


def test_flexible_binary_accuracy_reads_other_two_label_tasks_by_label_order() -> None:
    labels = ("non-toxic", "toxic")
    _, scores = corpus(
        "flexible_binary_accuracy", [("yes", "toxic"), ("non-toxic", "toxic"), ("no", "non-toxic")], labels
    )
    assert [s.value for s in scores] == [1, 0, 1]


def test_flexible_binary_accuracy_refuses_gold_answers_it_cannot_read() -> None:
    metric = build_metric("flexible_binary_accuracy", ("a", "b", "c"))
    assert metric.check_gold("a") is not None
    assert metric.check_gold("yes") is None


def test_exact_match_ignores_case_spacing_and_wrapping_punctuation_only() -> None:
    pairs = [
        ("SELECT name FROM t", "select  name from t"),
        ('"Paris."', "paris"),
        ("Paris, France", "Paris"),
    ]
    value, scores = corpus("exact_match", pairs)
    assert [s.value for s in scores] == [1, 1, 0]
    assert all(s.parsed for s in scores)
    assert value == pytest.approx(2 / 3)


def test_label_match_finds_the_first_label_anywhere_in_the_output() -> None:
    labels = ("World", "Sports", "Business", "Sci/Tech")
    pairs = [
        ("The article is about Sports.", "Sports"),
        ("business news, not world news", "Business"),  # the first label found counts
        ("I think sci/tech", "Sci/Tech"),
        ("It is about the worldwide economy", "World"),  # "worldwide" is not the word World
        ("World", "Sports"),
    ]
    value, scores = corpus("label_match", pairs, labels)
    assert [s.value for s in scores] == [1, 1, 1, 0, 0]
    assert [s.parsed for s in scores] == [True, True, True, False, True]
    assert value == pytest.approx(3 / 5)


def test_label_match_takes_the_longer_label_at_the_same_place() -> None:
    _, scores = corpus("label_match", [("it is non-toxic", "non-toxic")], ("toxic", "non-toxic"))
    assert scores[0].value == 1


def test_macro_f1_by_hand() -> None:
    labels = ("a", "b", "c")
    # gold:      a a a b b c
    # predicted: a a b b ? a      (? = unparseable: a miss for c, a false alarm for none)
    pairs = [("a", "a"), ("a", "a"), ("b", "a"), ("b", "b"), ("nonsense", "b"), ("a", "c")]
    value, scores = corpus("macro_f1", pairs, labels)
    # a: tp 2, fp 1, fn 1 -> 4/6; b: tp 1, fp 1, fn 1 -> 2/4; c: tp 0, fp 0, fn 1 -> 0
    assert value == pytest.approx((4 / 6 + 2 / 4 + 0) / 3)
    assert sum(not s.parsed for s in scores) == 1


def test_macro_f1_ignores_labels_that_never_occur() -> None:
    value, _ = corpus("macro_f1", [("a", "a"), ("b", "b")], ("a", "b", "c"))
    assert value == pytest.approx(1.0)


def test_rouge_l_by_hand() -> None:
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is "the cat on the mat": 5 of 6 each.
    value, scores = corpus("rouge_l", [("The cat sat on the mat.", "the cat is on the mat"), ("", "anything")])
    assert scores[0].value == pytest.approx(5 / 6)
    assert scores[1].value == 0 and scores[1].parsed
    assert value == pytest.approx(5 / 12)


REAL_PAIRS = [
    (
        "The Vaults is a cheap, family-friendly pub near Café Adriatic in the riverside area.",
        "Near Café Adriatic by the riverside, The Vaults is a family-friendly pub with low prices.",
    ),
    (
        "Alimentum is not a family-friendly place, located in city centre.",
        "There is a place in the city centre, Alimentum, that is not family-friendly.",
    ),
    (
        "SELECT COUNT(Position) FROM table WHERE School/Club Team = Butler CC (KS)",
        "SELECT COUNT Position FROM table WHERE School/Club Team = Butler CC (KS)",
    ),
    (
        "Apple shares rose 3.2% on Tuesday after the company reported record iPhone sales.",
        "Shares of Apple climbed 3.2 percent Tuesday, as record iPhone sales beat estimates.",
    ),
    ("Das Wetter ist schön heute, nicht wahr?", "The weather is nice today, isn't it?"),
    ("", "An empty prediction scores zero."),
    ("1992 - 1996: won 3 titles", "Between 1992 and 1996 the team won three titles."),
]


def _torchmetrics_rouge_l(preds: list[str], targets: list[str]) -> tuple[list[float], float]:
    from torchmetrics.functional.text.rouge import rouge_score

    each = [
        float(rouge_score(p, t, rouge_keys="rougeL")["rougeL_fmeasure"]) for p, t in zip(preds, targets, strict=True)
    ]
    mean = float(rouge_score(preds, targets, rouge_keys="rougeL")["rougeL_fmeasure"])
    return each, mean


def test_rouge_l_matches_torchmetrics_on_real_sentences() -> None:
    value, scores = corpus("rouge_l", REAL_PAIRS)
    each, mean = _torchmetrics_rouge_l([p for p, _ in REAL_PAIRS], [t for _, t in REAL_PAIRS])
    assert [s.value for s in scores] == pytest.approx(each, abs=1e-6)
    assert value == pytest.approx(mean, abs=1e-6)
    assert 0 < value < 1


@pytest.mark.shared_data
def test_rouge_l_matches_torchmetrics_on_e2e_references() -> None:
    folder = shared_task_data("e2e_nlg")
    pairs = []
    with open(folder / "validation.jsonl", encoding="utf-8") as f:
        for line in f:
            refs = json.loads(line)["references"]
            if len(refs) >= 2:
                pairs.append((refs[0], refs[1]))
            if len(pairs) == 200:
                break
    value, scores = corpus("rouge_l", pairs)
    each, mean = _torchmetrics_rouge_l([p for p, _ in pairs], [t for _, t in pairs])
    assert [s.value for s in scores] == pytest.approx(each, abs=1e-6)
    assert value == pytest.approx(mean, abs=1e-6)


def test_stsb_is_one_minus_the_normalised_absolute_error() -> None:
    pairs = [("3.8", "3.8"), ("2", "4.5"), ("The similarity is 4.0 out of 5", "5.0"), ("9", "5"), ("high", "4")]
    value, scores = corpus("stsb", pairs)
    assert [s.value for s in scores] == pytest.approx([1.0, 0.5, 0.8, 1.0, 0.0])  # 9 is clipped to 5
    assert [s.parsed for s in scores] == [True, True, True, True, False]
    assert value == pytest.approx(3.3 / 5)


def test_gsm8k_compares_the_last_numbers() -> None:
    gold = "She sells 16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\n#### 18"
    pairs = [
        ("16 - 3 - 4 = 9 eggs. 9 * $2 = $18.", gold),
        ("The answer is 18.00", gold),
        ("#### 1,800", "#### 1800"),
        ("18 eggs make 36 dollars", gold),  # last number 36: wrong
        ("I do not know", gold),  # unparseable
    ]
    value, scores = corpus("gsm8k", pairs)
    assert [s.value for s in scores] == [1, 1, 1, 0, 0]
    assert [s.parsed for s in scores] == [True, True, True, True, False]
    assert value == pytest.approx(3 / 5)
    assert build_metric("gsm8k").check_gold("no number here") is not None


def test_ner_f1_per_example_and_micro_over_entities() -> None:
    gold1 = '{"person": ["Ada Lovelace"], "location": ["London", "Paris"]}'
    out1 = 'Here: {"person": ["ada lovelace"], "location": ["London"], "organization": ["BBC"]}'
    gold2 = '{"person": [], "location": ["Berlin"]}'
    out2 = "no entities found"
    gold3 = '{"person": [], "location": []}'
    out3 = '{"person": []}'
    value, scores = corpus("ner_f1", [(out1, gold1), (out2, gold2), (out3, gold3)])
    # example 1: tp 2 (Ada Lovelace, London), fp 1 (BBC), fn 1 (Paris) -> 4/6
    assert scores[0].value == pytest.approx(4 / 6)
    assert not scores[1].parsed and scores[1].value == 0  # its entity is a miss
    assert scores[2].value == 1.0  # nothing to find, nothing found
    # micro: tp 2, fp 1, fn 2 -> 4/7
    assert value == pytest.approx(4 / 7)


def test_ner_f1_refuses_a_gold_answer_that_is_not_entity_json() -> None:
    metric = build_metric("ner_f1")
    assert metric.check_gold('{"person": ["Ada"]}') is None
    assert metric.check_gold("Ada (person)") is not None
    assert not metric.score('{"person": [1, 2]}', '{"person": ["Ada"]}').parsed


def test_json_validity() -> None:
    pairs = [('{"a": 1}', ""), ("[1, 2]", ""), ("{'a': 1}", ""), ('{"a": 1} trailing', "")]
    value, scores = corpus("json_validity", pairs)
    assert [s.value for s in scores] == [1, 1, 0, 0]
    assert [s.parsed for s in scores] == [True, True, False, False]
    assert value == 0.5
