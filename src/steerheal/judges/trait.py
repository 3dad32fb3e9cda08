"""The trait judge for joyful/gloomy: VADER's compound sentiment, a lexicon steerheal did not write.

VADER (Hutto & Gilbert 2014, the `vaderSentiment` package, lexicon inside it) scores a text from a
hand-rated word list with rules for negation, intensifiers, capitals and "!". Its `compound` is the summed
valence squashed by `x / sqrt(x² + 15)` into (-1, 1). It knows nothing about steerheal, the model or its
residual stream, which is why it is used here.

Failure modes (each one is why a comparison must hold the generation settings fixed):

- **length**: the sum grows with every valenced word and the squashing saturates, so a longer completion
  reads as more extreme at the same per-word mood. Compare variants at the same `max_new_tokens` and the
  same truncation (`max_words`); `compound_sentences`, the mean of per-sentence compounds, saturates less
  and is reported beside the whole-text one;
- **"!" and chat preambles**: each "!" (up to 3) adds to the magnitude, and "Sure! Great question!"
  moves the compound with no trait in the answer. A template that makes one variant chattier moves VADER;
- **lexicon coverage**: words it does not know count 0 (toyworld's words, jargon, other languages); a
  text with no lexicon word scores 0 whatever its mood, so `neutral_fraction` is reported;
- **negation and sarcasm** are handled by rules of thumb only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from steerheal.errors import SteerhealError
from steerheal.judges.judge import Pair, check_pairs, mean, require

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@cache
def analyzer() -> Any:
    """VADER's SentimentIntensityAnalyzer (its lexicon is read once per process)."""
    module = require("vaderSentiment.vaderSentiment", "vaderSentiment")
    return module.SentimentIntensityAnalyzer()


def split_sentences(text: str) -> list[str]:
    """Sentences at ".", "!" or "?" followed by white space, and at line breaks; blank pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def truncate_words(text: str, max_words: int | None) -> str:
    """The first `max_words` white-space separated words (all of them for None), re-joined by one space."""
    if max_words is None:
        return text
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


class VaderJudge:
    """Trait = VADER compound of each completion (the prompt is not read), averaged over completions.

    Scores: `compound` (mean whole-text compound), `compound_sentences` (mean over completions of the mean
    per-sentence compound), `positive_fraction` / `negative_fraction` (share of completions with compound
    above 0.05 / below -0.05, VADER's own thresholds) and `neutral_fraction` (the rest), `n_scored`. Empty
    completions carry no sentiment and are left out of every score (NaN when all are empty); `n_empty`
    counts them, since a variant that says nothing must not look neutral. `max_words` truncates every
    completion before scoring (compare variants only at the same value).
    """

    name = "vader"

    def __init__(self, max_words: int | None = None) -> None:
        if max_words is not None and (isinstance(max_words, bool) or max_words < 1):
            raise SteerhealError(f"VaderJudge: max_words={max_words!r} must be a positive integer or None")
        self.max_words = max_words
        analyzer()  # fail now, with the extra named, not at the first call

    def compound(self, text: str) -> float:
        return float(analyzer().polarity_scores(text)["compound"])

    def sentence_compound(self, text: str) -> float:
        return mean([self.compound(s) for s in split_sentences(text)])

    def __call__(self, pairs: Sequence[Pair]) -> dict[str, float]:
        texts = [truncate_words(c, self.max_words) for _, c in check_pairs(pairs)]
        scored = [t for t in texts if t.strip()]
        whole = [self.compound(t) for t in scored]
        return {
            "compound": mean(whole),
            "compound_sentences": mean([self.sentence_compound(t) for t in scored]),
            "positive_fraction": mean([float(c > 0.05) for c in whole]),
            "negative_fraction": mean([float(c < -0.05) for c in whole]),
            "neutral_fraction": mean([float(-0.05 <= c <= 0.05) for c in whole]),
            "n_scored": float(len(scored)),
            "n_empty": float(len(texts) - len(scored)),
        }
