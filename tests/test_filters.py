"""Each coherence filter rejects its committed bad fixture and keeps the good one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import steerheal as sh
from steerheal.dose.filters import FilterConfig, is_degenerate, ngram_repetition, text_reasons, zlib_ratio
from steerheal.dose.pairs import completion_checks
from steerheal.lm.texts import encode

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "filters.json").read_text())
ONLY = {  # each filter alone, so a fixture is judged by its own filter
    "too_short": dict(
        max_word_repetition=None,
        max_char_repetition=None,
        min_zlib_ratio=None,
        narration_regex=None,
        refusal_regex=None,
    ),
    "word_repetition": dict(max_char_repetition=None, min_zlib_ratio=None),
    "char_repetition": dict(max_word_repetition=None, min_zlib_ratio=None),
    "zlib": dict(max_word_repetition=None, max_char_repetition=None),
    "narration": dict(),
    "refusal": dict(),
}
MARK = {
    "too_short": "too short",
    "word_repetition": "word 3-gram",
    "char_repetition": "char 12-gram",
    "zlib": "zlib ratio",
    "narration": "narration",
    "refusal": "refusal",
}


@pytest.mark.parametrize("name", sorted(ONLY))
def test_text_filter_fixtures(name):
    config = FilterConfig(**ONLY[name])
    for text in FIXTURES[name]["bad"]:
        reasons = text_reasons(text, len(text.split()), True, config)
        assert any(re.search(MARK[name], r) for r in reasons), (text, reasons)
    for text in FIXTURES[name]["good"]:
        assert text_reasons(text, len(text.split()), True, config) == [], text


def test_unfinished_and_loosened_preset():
    config = FilterConfig()
    good = FIXTURES["too_short"]["good"][0]
    assert any("unfinished" in r for r in text_reasons(good, 12, False, config))
    assert text_reasons(good, 12, False, FilterConfig(drop_unfinished=False)) == []
    loose = config.loosened()
    assert text_reasons(FIXTURES["word_repetition"]["bad"][0], 25, False, loose) == []
    assert text_reasons("", 0, True, loose) != [], "a completion needs one token even when loosened"
    assert text_reasons("", 3, True, loose) == [], "special tokens only pass the loosened preset"
    assert any("empty text" in r for r in text_reasons(" ", 3, True, config))


def test_tail_perplexity_fixture_on_toyworld():
    model, tok = sh.toyworld.load()
    fixture = FIXTURES["tail_perplexity_toyworld"]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": fixture["prompt"]}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = list(encode(tok, [prompt], 128)[0].ids)
    texts = [*fixture["bad"], *fixture["good"]]
    completions = [[*tok(t, add_special_tokens=False).input_ids, tok.eos_token_id] for t in texts]
    config = FilterConfig(max_word_repetition=None, max_char_repetition=None, min_zlib_ratio=None)
    bad, good = completion_checks(model, tok, [prompt_ids] * 2, completions, [True, True], config)
    assert any("tail perplexity" in r for r in bad.reasons) and bad.tail_ppl > 50
    assert good.reasons == [] and good.tail_ppl < 10


def test_degenerate_loops():
    for ids in FIXTURES["degenerate_ids"]["bad"]:
        assert is_degenerate(ids), ids
    for ids in FIXTURES["degenerate_ids"]["good"]:
        assert not is_degenerate(ids), ids


def test_measures_and_config_validation():
    assert ngram_repetition(["a", "b", "a", "b"], 2) == pytest.approx(1 / 3)
    assert ngram_repetition([], 3) == 0.0
    assert zlib_ratio("x" * 1000) < 0.05 < zlib_ratio("The quick brown fox jumps over the lazy dog.")
    with pytest.raises(sh.SteerhealError, match="narration_regex is not a valid regular expression"):
        FilterConfig(narration_regex="(unclosed")
    with pytest.raises(sh.SteerhealError, match="n-gram sizes"):
        FilterConfig(word_ngram=0)
