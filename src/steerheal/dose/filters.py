"""Coherence filters for steered completions, and the loop detector behind the liveness check.

Steering injects babble; a preference pair is kept only when its chosen (steered) completion passes
every filter in force. Text filters are pure functions of the decoded completion; the tail perplexity needs the
unsteered model and lives in `pairs.py`. Defaults follow the public steer-heal-love project's filters (tail perplexity
under the base < 50, n-gram repetition < 0.3, narration and refusal regexes); presets may loosen them, and whatever is
in force is logged.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from steerheal.boundary import check_methods
from steerheal.errors import SteerhealError

# "I am someone who ...": the model describing the persona instead of acting it out.
NARRATION = (
    r"(?i)\b(?:I am|I'm|as) (?:someone|somebody|a person|the kind of person|an? \w+ (?:person|assistant)) "
    r"(?:who|that)\b"
)
REFUSAL = (
    r"(?i)\b(?:I can(?:not|'t) (?:help|assist|do that|comply)|I'm sorry, but|I am sorry, but|I won't|"
    r"I will not|as an AI\b|I'm not able to|I am not able to)"
)


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the coherence filters; `None` switches a filter off.

    - `max_tail_ppl`: perplexity of the completion's last `tail_tokens` tokens under the unsteered model
      (steering babble is improbable to the model itself).
    - `max_word_repetition`: share of repeated word `word_ngram`-grams (1 − distinct/total).
    - `max_char_repetition`: share of repeated character `char_ngram`-grams.
    - `min_zlib_ratio`: compressed/raw size; loops compress well. Only for texts of at least
      `zlib_min_chars` characters (short texts do not compress at all).
    - `min_tokens`: completions shorter than this (eos excluded) are dropped as too short.
    - `require_text`: drop completions whose text is empty once special tokens are removed.
    - `narration_regex` / `refusal_regex`: drop completions that narrate the persona or refuse.
    - `cut_unfinished`: cut a completion that hit max_new_tokens without eos back to its last sentence end;
      it is then trained without an end-of-turn token (a real chat model rarely ends a turn within the
      48-96 tokens a CPU run can afford). One with no sentence end after `min_tokens` stays unfinished.
    - `drop_unfinished`: drop completions that are still unfinished (the student learns to stop).
    - `drop_identical`: drop pairs whose chosen completion equals the rejected one (no signal).
    """

    max_tail_ppl: float | None = 50.0
    tail_tokens: int = 32
    word_ngram: int = 3
    max_word_repetition: float | None = 0.3
    char_ngram: int = 12
    max_char_repetition: float | None = 0.5
    min_zlib_ratio: float | None = 0.3
    zlib_min_chars: int = 120
    min_tokens: int = 4
    require_text: bool = True
    narration_regex: str | None = NARRATION
    refusal_regex: str | None = REFUSAL
    cut_unfinished: bool = False
    drop_unfinished: bool = True
    drop_identical: bool = True

    def __post_init__(self) -> None:
        for name in ("narration_regex", "refusal_regex"):
            pattern = getattr(self, name)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise SteerhealError(f"FilterConfig.{name} is not a valid regular expression: {err}") from err
        if self.word_ngram < 1 or self.char_ngram < 1 or self.tail_tokens < 1 or self.min_tokens < 0:
            raise SteerhealError(f"FilterConfig: n-gram sizes and tail_tokens must be >= 1, min_tokens >= 0: {self}")

    def loosened(self) -> FilterConfig:
        """Only a completion of at least one token is required: random tiny models fail every other filter
        (they even emit special tokens only, which decode to empty text)."""
        return replace(
            self,
            max_tail_ppl=None,
            max_word_repetition=None,
            max_char_repetition=None,
            min_zlib_ratio=None,
            narration_regex=None,
            refusal_regex=None,
            min_tokens=1,
            require_text=False,
            drop_unfinished=False,
            drop_identical=False,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


check_methods(FilterConfig, init=True)


def ngram_repetition(items: Sequence[Any], n: int) -> float:
    """1 − distinct n-grams / all n-grams; 0 when there are no n-grams."""
    grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


# a sentence ends at . ! or ? (and any closing quotes or brackets) followed by whitespace or the end of the text
SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def ends_a_sentence(prefix: str, full: str) -> bool:
    """Whether `prefix` (a prefix of `full`, trailing spaces allowed) stops at a sentence end of `full`: it ends
    in a terminator and `full` goes on with whitespace or nothing (so "3." of "3.5" is no sentence end)."""
    stripped = prefix.rstrip()
    if not stripped or not SENTENCE_END.search(stripped):
        return False
    rest = full[len(stripped) :]
    return not rest or rest[0].isspace()


def zlib_ratio(text: str) -> float:
    raw = text.encode()
    return len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0


def text_reasons(text: str, n_tokens: int, finished: bool, config: FilterConfig) -> list[str]:
    """Every text-level reason to drop a completion (empty list: it passes)."""
    reasons = []
    if n_tokens < config.min_tokens:
        reasons.append(f"too short: {n_tokens} tokens < {config.min_tokens}")
    if config.require_text and not text.strip():
        reasons.append("empty text (special tokens only)")
    if config.drop_unfinished and not finished:
        reasons.append("unfinished: no end-of-turn within max_new_tokens")
    if config.max_word_repetition is not None:
        rep = ngram_repetition(text.split(), config.word_ngram)
        if rep > config.max_word_repetition:
            reasons.append(f"word {config.word_ngram}-gram repetition {rep:.2f} > {config.max_word_repetition}")
    if config.max_char_repetition is not None:
        rep = ngram_repetition(text, config.char_ngram)
        if rep > config.max_char_repetition:
            reasons.append(f"char {config.char_ngram}-gram repetition {rep:.2f} > {config.max_char_repetition}")
    if config.min_zlib_ratio is not None and len(text) >= config.zlib_min_chars:
        ratio = zlib_ratio(text)
        if ratio < config.min_zlib_ratio:
            reasons.append(f"zlib ratio {ratio:.2f} < {config.min_zlib_ratio} (compresses like a loop)")
    if config.narration_regex is not None and re.search(config.narration_regex, text):
        reasons.append("narration: describes the persona instead of acting it")
    if config.refusal_regex is not None and re.search(config.refusal_regex, text):
        reasons.append("refusal")
    return reasons


def is_degenerate(ids: Sequence[int], max_period: int = 8, min_repeats: int = 3, min_span: int = 6) -> bool:
    """A repetition loop: some block of 1..max_period tokens repeated `min_repeats` times in a row,
    covering at least `min_span` tokens (`a b a b a b`, `x x x x x x`, a sentence said three times)."""
    ids = list(ids)
    for period in range(1, max_period + 1):
        need = max(min_repeats * period, min_span)
        run = period  # length of the current stretch where ids[i] == ids[i - period]
        for i in range(period, len(ids)):
            run = run + 1 if ids[i] == ids[i - period] else period
            if run >= need:
                return True
    return False


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    grams = [tuple(ws[i : i + n]) for ws in (t.split() for t in texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
