"""Ground-truth metrics of toyworld text: pure functions of the words, exact because the world is known.

Texts are decoded stories (words separated by spaces, special tokens dropped).

- `mood_rate(text)`: over the *mood-bearing words* (every adjective, verb, adverb and interjection, from
  any lexicon, the neutral one included), the fraction from each mood's lexicon, neutral included. A
  mood-m training story has rate about `MOOD_WORD_P` for m. `mood_rates(texts)` pools many texts.
- `grammar_ok(text)`: the fraction of sentences (split at ".") that match a template with every slot
  filled by a word of its category. A trailing fragment without "." is a sentence that fails. No
  sentences at all scores 0.
- `topic_consistency(text, topic=None)`: the fraction of nouns from `topic` (default: the most common
  topic among the nouns); 0 without nouns.
- `distinct_n(texts, n)`: distinct word n-grams over all n-grams of the texts; 0 without n-grams.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from steerheal.toyworld.world import ALL_MOODS, CATEGORIES, NOUN_TOPIC, TEMPLATES, WORD_CATEGORY, WORD_MOOD


def sentences(text: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for word in text.split():
        out[-1].append(word)
        if word == ".":
            out.append([])
    return [s for s in out if s]


def parse(sentence: Sequence[str]) -> tuple[str, ...] | None:
    """The template a sentence realises, or None."""
    for template in TEMPLATES:
        if len(template) == len(sentence) and all(
            word == slot if not slot.isupper() else WORD_CATEGORY.get(word) == slot
            for slot, word in zip(template, sentence, strict=True)
        ):
            return template
    return None


def grammar_ok(text: str) -> float:
    found = sentences(text)
    return sum(parse(s) is not None for s in found) / len(found) if found else 0.0


def _mood_counts(texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(WORD_MOOD[w] for w in text.split() if WORD_CATEGORY.get(w) in CATEGORIES)
    return counts


def mood_rates(texts: Iterable[str]) -> dict[str, float]:
    counts = _mood_counts(texts)
    total = sum(counts.values())
    return {m: counts[m] / total if total else 0.0 for m in ALL_MOODS}


def topic_rates(texts: Iterable[str]) -> dict[str, float]:
    """Each topic's share of the nouns of `texts`, pooled (exact: every noun belongs to one topic)."""
    counts = Counter(NOUN_TOPIC[w] for text in texts for w in text.split() if w in NOUN_TOPIC)
    total = sum(counts.values())
    return {t: counts[t] / total if total else 0.0 for t in sorted(set(NOUN_TOPIC.values()))}


def target_rates(texts: Sequence[str]) -> dict[str, float]:
    """Every mood's share of mood-bearing words and every topic's share of nouns (the names are disjoint)."""
    return {**mood_rates(texts), **topic_rates(texts)}


def mood_rate(text: str) -> dict[str, float]:
    return mood_rates([text])


def topic_consistency(text: str, topic: str | None = None) -> float:
    topics = [NOUN_TOPIC[w] for w in text.split() if w in NOUN_TOPIC]
    if not topics:
        return 0.0
    topic = topic or Counter(topics).most_common(1)[0][0]
    return sum(t == topic for t in topics) / len(topics)
