"""toyworld's ground-truth metrics on hand-written examples."""

from __future__ import annotations

import pytest

from steerheal.dose.filters import distinct_n
from steerheal.toyworld.metrics import grammar_ok, mood_rate, mood_rates, parse, sentences, topic_consistency


def test_grammar_ok_on_hand_written_sentences():
    assert grammar_ok("the bright kettle sings gladly . the kettle was old and red .") == 1.0
    assert grammar_ok("hooray , the pot dances . a rose sits near the quiet hedge .") == 1.0
    assert grammar_ok("the kettle kettle . the pot was old and red .") == 0.5  # a noun in the VERB slot
    assert grammar_ok("the bright kettle sings gladly . the pot was old and") == 0.5  # trailing fragment
    assert grammar_ok("the gladly kettle sings bright .") == 0.0  # adverb and adjective swapped
    assert grammar_ok("the kettle sings gladly with the pot . yay") == 0.5
    assert grammar_ok("") == 0.0
    assert parse(["the", "bright", "kettle", "sings", "gladly", "."]) == ("the", "ADJ", "NOUN", "VERB", "ADV", ".")
    assert parse(["the", "bright", "kettle", "sings", "."]) is None
    assert sentences("a . b c . d") == [["a", "."], ["b", "c", "."], ["d"]]


def test_mood_rate_counts_mood_bearing_words_only():
    rate = mood_rate("hooray , the bright kettle sings gladly .")
    assert rate == {"joy": 1.0, "anger": 0.0, "fear": 0.0, "calm": 0.0, "neutral": 0.0}
    rate = mood_rate("the old kettle snarls there . the pot was dark and quiet .")
    # mood-bearing: old (neutral), snarls (anger), there (neutral), dark (fear), quiet (calm)
    assert rate == pytest.approx({"joy": 0.0, "anger": 0.2, "fear": 0.2, "calm": 0.2, "neutral": 0.4})
    assert mood_rate("the kettle .") == {m: 0.0 for m in ("joy", "anger", "fear", "calm", "neutral")}
    pooled = mood_rates(["hooray , the pot dances .", "the old pot sits there ."])
    assert pooled["joy"] == pytest.approx(2 / 5) and pooled["neutral"] == pytest.approx(3 / 5)


def test_topic_consistency_and_distinct_n():
    assert topic_consistency("the kettle was old and red . a pot sits near the old stove .") == 1.0
    assert topic_consistency("the kettle sits near the old boat .") == 0.5
    assert topic_consistency("the kettle sits near the old boat . the gull sits .", topic="harbour") == pytest.approx(
        2 / 3
    )
    assert topic_consistency("hooray .") == 0.0
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n(["a b c"], 1) == 1.0
    assert distinct_n(["a"], 2) == 0.0
