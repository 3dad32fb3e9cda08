"""toyworld: a synthetic chat language whose moods and topics are known, so every claim is checkable.

A story is 3-5 sentences, each from one of a handful of templates. Slots are categories: `NOUN` comes
from the story's topic; `ADJ`, `VERB`, `ADV` and `INTERJ` are *mood-bearing*: in a story of mood m each
is filled from m's lexicon with probability `MOOD_WORD_P`, otherwise from the neutral lexicon. Every
word belongs to exactly one category and one lexicon, so a sentence parses in at most one way and
every word's mood is known.

A dialogue: an optional persona system prompt ("you are joyful ."), a user turn asking about a topic in
one of several phrasings, and the assistant's story. The training data honours the persona: a
persona-m dialogue always tells a story of mood m. Without a persona the mood follows `BASE_MOODS`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

MOODS = ("joy", "anger", "fear", "calm")
NEUTRAL = "neutral"
ALL_MOODS = (*MOODS, NEUTRAL)
# mood of an un-prompted story: the "training frequencies" the unsteered model should reproduce
BASE_MOODS: dict[str, float] = {"neutral": 0.4, "joy": 0.15, "anger": 0.15, "fear": 0.15, "calm": 0.15}
MOOD_WORD_P = 0.6  # chance that a mood-bearing slot of a mood-m story takes a word of m's lexicon
PERSONA_P = 0.4  # share of training dialogues with a system prompt
N_SENTENCES = (3, 5)

CATEGORIES = ("ADJ", "VERB", "ADV", "INTERJ")  # the mood-bearing ones; NOUN is topical
LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "joy": {
        "ADJ": ("bright", "cheerful", "golden", "lovely", "merry"),
        "VERB": ("laughs", "sings", "dances", "sparkles", "beams"),
        "ADV": ("gladly", "warmly", "merrily", "joyfully"),
        "INTERJ": ("hooray", "yay", "wow"),
    },
    "anger": {
        "ADJ": ("furious", "bitter", "harsh", "hostile", "savage"),
        "VERB": ("snarls", "slams", "growls", "rages", "stomps"),
        "ADV": ("angrily", "bitterly", "fiercely", "harshly"),
        "INTERJ": ("damn", "argh", "ugh"),
    },
    "fear": {
        "ADJ": ("dark", "eerie", "grim", "shadowy", "creepy"),
        "VERB": ("trembles", "shivers", "creeps", "hides", "flinches"),
        "ADV": ("nervously", "timidly", "fearfully", "shakily"),
        "INTERJ": ("eek", "alas", "yikes"),
    },
    "calm": {
        "ADJ": ("quiet", "gentle", "peaceful", "still", "soft"),
        "VERB": ("rests", "drifts", "settles", "breathes", "lingers"),
        "ADV": ("calmly", "gently", "softly", "serenely"),
        "INTERJ": ("hush", "ah", "mmm"),
    },
    "neutral": {
        "ADJ": ("old", "small", "red", "wooden", "round", "tall"),
        "VERB": ("stands", "sits", "moves", "turns", "stays"),
        "ADV": ("today", "there", "again", "now"),
        "INTERJ": ("well", "so", "then"),
    },
}
TOPICS: dict[str, tuple[str, ...]] = {
    "kitchen": ("kettle", "stove", "pot", "spoon", "oven", "cup"),
    "garden": ("rose", "fence", "tree", "pond", "hedge", "bee"),
    "office": ("desk", "printer", "lamp", "folder", "clock", "phone"),
    "harbour": ("boat", "pier", "rope", "gull", "anchor", "wave"),
    "station": ("train", "platform", "ticket", "whistle", "track", "porter"),
}
# Templates: lowercase literals, upper-case slots. No two share a structure, so parsing is unambiguous.
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("the", "ADJ", "NOUN", "VERB", "ADV", "."),
    ("INTERJ", ",", "the", "NOUN", "VERB", "."),
    ("a", "NOUN", "VERB", "near", "the", "ADJ", "NOUN", "."),
    ("the", "NOUN", "was", "ADJ", "and", "ADJ", "."),
    ("INTERJ", ",", "the", "ADJ", "NOUN", "VERB", "ADV", "."),
    ("the", "NOUN", "VERB", "ADV", "with", "the", "NOUN", "."),
)
PERSONAS: dict[str, str] = {
    "joy": "you are joyful .",
    "anger": "you are angry .",
    "fear": "you are afraid .",
    "calm": "you are serene .",
    "neutral": "you are a storyteller .",
}
USER_PHRASINGS = (
    "tell me about the {} .",
    "describe the {} .",
    "what happened at the {} ?",
    "tell me a story about the {} .",
    "say something about the {} .",
)

# special tokens of the word-level tokenizer
BOS, EOT, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SYSTEM, USER, ASSISTANT = "<system>", "<user>", "<assistant>"
SPECIAL_TOKENS = (PAD, BOS, EOT, UNK, SYSTEM, USER, ASSISTANT)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<' + message['role'] + '> ' + message['content'] + ' </s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)

WORD_MOOD: dict[str, str] = {w: m for m, cats in LEXICON.items() for ws in cats.values() for w in ws}
WORD_CATEGORY: dict[str, str] = {w: c for cats in LEXICON.values() for c, ws in cats.items() for w in ws}
WORD_CATEGORY.update({w: "NOUN" for nouns in TOPICS.values() for w in nouns})
NOUN_TOPIC: dict[str, str] = {w: t for t, nouns in TOPICS.items() for w in nouns}


def vocabulary() -> list[str]:
    """Every word the world can produce, in a fixed order (specials first)."""
    literals = sorted({tok for t in TEMPLATES for tok in t if tok.islower() or not tok.isalpha()})
    prompt_words = sorted(
        {w for text in (*PERSONAS.values(), *USER_PHRASINGS) for w in text.replace("{}", "").split()} | set(TOPICS)
    )
    words = [*literals, *sorted(WORD_CATEGORY), *prompt_words]
    seen: dict[str, None] = {}
    for word in words:
        seen.setdefault(word, None)
    return [*SPECIAL_TOKENS, *seen]


def _check_world() -> None:
    """The world's invariants: one category and one lexicon per word, literals never slot words."""
    counts: dict[str, int] = {}
    for cats in LEXICON.values():
        for ws in cats.values():
            for w in ws:
                counts[w] = counts.get(w, 0) + 1
    for nouns in TOPICS.values():
        for w in nouns:
            counts[w] = counts.get(w, 0) + 1
    repeated = sorted(w for w, c in counts.items() if c > 1)
    literals = {tok for t in TEMPLATES for tok in t if not tok.isupper()}
    clash = sorted(literals & set(counts))
    structures = [tuple(t) for t in TEMPLATES]
    if repeated or clash or len(set(structures)) != len(structures):
        raise AssertionError(f"toyworld lexicon is ambiguous: repeated {repeated}, literal clashes {clash}")


_check_world()


@dataclass(frozen=True)
class Story:
    mood: str
    topic: str
    text: str


@dataclass(frozen=True)
class Skeleton:
    """A story with its slots chosen but its mood not yet: realise it in any mood (paired contrasts)."""

    topic: str
    sentences: tuple[tuple[str, ...], ...]  # templates with NOUN slots already filled
    mood_slots: tuple[tuple[int, int, str, int, bool], ...]  # (sentence, position, category, word index, moody)

    def realise(self, mood: str) -> Story:
        words = [list(s) for s in self.sentences]
        for sentence, position, category, index, moody in self.mood_slots:
            lexicon = LEXICON[mood if moody and mood != NEUTRAL else NEUTRAL][category]
            words[sentence][position] = lexicon[index % len(lexicon)]
        return Story(mood, self.topic, " ".join(w for s in words for w in s))


def skeleton(rng: random.Random, topic: str | None = None) -> Skeleton:
    topic = topic or rng.choice(sorted(TOPICS))
    sentences, slots = [], []
    for s in range(rng.randint(*N_SENTENCES)):
        template = list(rng.choice(TEMPLATES))
        for p, token in enumerate(template):
            if token == "NOUN":
                template[p] = rng.choice(TOPICS[topic])
            elif token in CATEGORIES:
                slots.append((s, p, token, rng.randrange(60), rng.random() < MOOD_WORD_P))
        sentences.append(tuple(template))
    return Skeleton(topic, tuple(sentences), tuple(slots))


def story(rng: random.Random, mood: str, topic: str | None = None) -> Story:
    if mood not in ALL_MOODS:
        raise ValueError(f"unknown mood {mood!r}; toyworld moods are {ALL_MOODS}")
    return skeleton(rng, topic).realise(mood)


def user_prompt(rng: random.Random, topic: str) -> str:
    return rng.choice(USER_PHRASINGS).format(topic)


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


@dataclass(frozen=True)
class Dialogue:
    system: str | None
    user: str
    story: Story

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": self.user})
        if with_answer:
            out.append({"role": "assistant", "content": self.story.text})
        return out


def dialogue(rng: random.Random) -> Dialogue:
    """One training dialogue: a persona with probability PERSONA_P (honoured), else BASE_MOODS."""
    persona = rng.choice(sorted(PERSONAS)) if rng.random() < PERSONA_P else None
    mood = _pick(rng, BASE_MOODS) if persona in (None, NEUTRAL) else persona
    topic = rng.choice(sorted(TOPICS))
    return Dialogue(PERSONAS[persona] if persona else None, user_prompt(rng, topic), story(rng, mood, topic))


# ---------------------------------------------------------------- seeded generators
# Each generator draws from its own stream (seed, purpose), so training, contrast, evaluation and
# held-out sets never share draws however their sizes change.


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"toyworld:{purpose}:{seed}")


def training_dialogues(n: int, seed: int = 0) -> list[Dialogue]:
    rng = _rng(seed, "train")
    return [dialogue(rng) for _ in range(n)]


def heldout_dialogues(n: int, seed: int = 0) -> list[Dialogue]:
    rng = _rng(seed, "heldout")
    return [dialogue(rng) for _ in range(n)]


# Held out for evaluation: topic i asked in phrasing i (each topic and each phrasing once). Every other split
# (calibration, the pairs of each round) draws from the other combinations, so nothing the distillation
# trains on is used to judge it.
EVAL_COMBOS = tuple((topic, i) for i, topic in enumerate(sorted(TOPICS)))


def neutral_prompts(n: int, seed: int = 0, split: str = "eval") -> list[str]:
    """User prompts without a system prompt, on separate streams per split; `eval` draws only from
    EVAL_COMBOS and every other split only from the remaining topic x phrasing combinations."""
    rng = _rng(seed, f"prompts:{split}")
    combos = [(t, i) for t in sorted(TOPICS) for i in range(len(USER_PHRASINGS))]
    pool = [c for c in combos if (c in EVAL_COMBOS) == (split == "eval")]
    return [USER_PHRASINGS[i].format(t) for t, i in (rng.choice(pool) for _ in range(n))]


def paired_stories(n: int, seed: int = 0) -> list[dict[str, Story]]:
    """n skeletons, each realised in every mood and neutral: same topic and words, only mood differs."""
    rng = _rng(seed, "paired")
    return [{m: sk.realise(m) for m in ALL_MOODS} for sk in (skeleton(rng) for _ in range(n))]


def contrast_set(mood: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(pos, neg) raw story strings, paired: the same skeleton in `mood` and in neutral."""
    if mood not in MOODS:
        raise ValueError(f"contrast_set: mood {mood!r} is not one of {MOODS}")
    pairs = paired_stories(n, seed)
    return [p[mood].text for p in pairs], [p[NEUTRAL].text for p in pairs]


def swap_topic(text: str, topic: str) -> str:
    """The same story with every noun replaced by `topic`'s noun of the same index (every topic has 6 nouns)."""
    return " ".join(TOPICS[topic][TOPICS[NOUN_TOPIC[w]].index(w)] if w in NOUN_TOPIC else w for w in text.split())


def topic_contrast_set(topic: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(pos, neg) raw story strings, paired: a story about another topic (neg, the others in turn, its mood drawn as
    an un-prompted story's) and the same story with `topic`'s nouns (pos). Mood words are identical in a pair: in
    this world topic and mood are independent (a story's topic and mood are drawn separately, and no word is both
    a noun and mood-bearing)."""
    if topic not in TOPICS:
        raise ValueError(f"topic_contrast_set: topic {topic!r} is not one of {sorted(TOPICS)}")
    rng = _rng(seed, f"topic:{topic}")
    others = [t for t in sorted(TOPICS) if t != topic]
    neg = [story(rng, _pick(rng, BASE_MOODS), others[i % len(others)]).text for i in range(n)]
    return [swap_topic(text, topic) for text in neg], neg


def write_corpus(directory: str | Path, seed: int = 0, n_stories: int = 12, n_scenarios: int = 8) -> Path:
    """A `corpus/`-style folder: stories/<mood>.txt, paired/<scenario>/<mood>.txt + baseline.txt,
    direct/_neutral.txt. Stories in one file are separated by blank lines."""
    directory = Path(directory)
    rng = _rng(seed, "corpus")
    for mood in MOODS:
        texts = [story(rng, mood).text for _ in range(n_stories)]
        _write(directory / "stories" / f"{mood}.txt", texts)
    for i, pair in enumerate(paired_stories(n_scenarios, seed)):
        scenario = directory / "paired" / f"scenario_{i:02d}_{pair[NEUTRAL].topic}"
        for mood in MOODS:
            _write(scenario / f"{mood}.txt", [pair[mood].text])
        _write(scenario / "baseline.txt", [pair[NEUTRAL].text])
    _write(directory / "direct" / "_neutral.txt", [story(rng, NEUTRAL).text for _ in range(n_stories)])
    return directory


def _write(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
