"""The toyworld judge: exact mood rate and grammar, where the world's truth is known.

On toyworld no outside instrument is needed: every word's mood and every sentence's grammar can be checked
against the world's definition (`toyworld.metrics`). This judge wraps those metrics in the judge interface,
so the frontier runs on toyworld with the truth as its trait axis and grammar beside the KL.
"""

from __future__ import annotations

from collections.abc import Sequence

from steerheal.errors import SteerhealError
from steerheal.judges.judge import Pair, check_pairs, mean
from steerheal.toyworld.metrics import grammar_ok, target_rates
from steerheal.toyworld.world import MOODS, TOPICS


class ToyworldJudge:
    """Scores: `mood_rate` (the target mood's share of mood-bearing words, pooled over completions),
    `off_target_mood_rate`, `grammar_ok` (mean share of grammatical sentences). A topic's rate is its share of
    nouns."""

    name = "toyworld"

    def __init__(self, mood: str = "joy", off_target_mood: str = "anger") -> None:
        for which in (mood, off_target_mood):
            if which not in (*MOODS, *TOPICS):
                raise SteerhealError(
                    f"ToyworldJudge: {which!r} is not a toyworld mood or topic; choose from {MOODS} or {sorted(TOPICS)}"
                )
        self.mood, self.off_target_mood = mood, off_target_mood

    def __call__(self, pairs: Sequence[Pair]) -> dict[str, float]:
        texts = [c for _, c in check_pairs(pairs)]
        rates = target_rates(texts)
        return {
            "mood_rate": rates[self.mood],
            "off_target_mood_rate": rates[self.off_target_mood],
            "grammar_ok": mean([grammar_ok(t) for t in texts]),
        }
