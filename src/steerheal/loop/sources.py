"""Concepts from a corpus, a saved readout or a saved Vector: any concept a user has read can be distilled.

- `corpus`: one concept of a corpus folder; positives and negatives by the corpus rules (`Corpus.positives`,
  `negatives`), read at `mean` and re-read on the student every round, as the other sources are.
- `readout`: the concept's row is round 0's direction (no extraction: the readout is what the user trusts);
  later rounds re-read it from the corpus recorded with the readout (`meta.corpus`) or `concept.corpus`.
- `vector`: a saved Vector is round 0's direction; its contrast texts are not stored, so re-extraction needs
  `concept.corpus` (+ `concept.name`) or the persona files.
Without a corpus (and with `concept.reextract False`) every round steers with the saved direction.

The off-target control is another concept of the same corpus or readout (named, or the least similar one),
or the builtin formal/casual persona for a lone vector. Prompts: toyworld's own on toyworld, elsewhere
steerheal's 280 shipped neutral prompts split into calibration, training and held-out slices. On toyworld,
a mood concept and a mood off-target keep the exact mood judge.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.lm.fingerprint import warn_if_made_for_another
from steerheal.lm.texts import Text
from steerheal.loop.concept_parts import (
    BUILTIN_OFF_NEG,
    BUILTIN_OFF_POS,
    Concept,
    Contrast,
    mood_judge,
    neutral_prompts,
    persona_concept,
    shipped_prompts,
    split_prompts,
    toyworld_prompts,
)
from steerheal.loop.runconfig import RunConfig
from steerheal.read.capture import check_fits
from steerheal.read.corpus import Corpus
from steerheal.read.persona import persona_contrast
from steerheal.read.readout import Readout
from steerheal.read.readout_open import open_readout
from steerheal.read.vector import Vector

WORD = re.compile(r"[a-z']+")


def spread(texts: list[Text], n: int) -> list[Text]:
    """At most n texts spread evenly over the list (negatives are every other concept's texts: the first n
    would all be one concept's)."""
    if len(texts) <= n:
        return list(texts)
    return [texts[i * len(texts) // n] for i in range(n)]


def corpus_contrast(corpus: Corpus, name: str, n: int) -> Contrast:
    """One concept's positives and negatives by the corpus rules, at most n of each, read at `mean`."""
    return Contrast(spread(corpus.positives(name), n), spread(corpus.negatives(name), n), "mean")


def _bag(texts: list[str]) -> Counter[str]:
    return Counter(w for t in texts for w in WORD.findall(t.lower()))


def least_similar_words(corpus: Corpus, name: str, among: list[str] | None = None) -> str:
    """The concept whose positives share the fewest words with `name`'s (cosine of word counts): model-free,
    so it is chosen before anything loads."""
    target = _bag(corpus.positives(name))
    others = [c for c in (among or corpus.concepts) if c != name]
    if not others:
        raise SteerhealError(
            f"corpus {str(corpus.root)!r} has no concept besides {name!r}; the off-target control needs another "
            "concept: add one to the corpus"
        )

    def cos(other: str) -> float:
        bag = _bag(corpus.positives(other))
        dot = sum(v * bag[w] for w, v in target.items())
        norm = math.sqrt(sum(v * v for v in target.values()) * sum(v * v for v in bag.values()))
        return dot / norm if norm else 0.0

    return min(others, key=lambda c: (cos(c), c))


def least_similar_row(readout: Readout, name: str, among: list[str] | None = None) -> str:
    """The row closest to orthogonal to `name`'s (smallest |cos|, mean over layers): an opposite concept
    (cos near -1) moves with the target, so it is no control."""
    j = readout.concepts.index(name)
    others = [c for c in (among or readout.concepts) if c != name and c in readout.concepts]
    if not others:
        raise SteerhealError(f"the readout has no concept besides {name!r} to use as the off-target control")

    def cos(other: str) -> float:
        i = readout.concepts.index(other)
        return sum(abs(float(v[j] @ v[i])) for v in readout.vectors.values()) / len(readout.vectors)

    return min(others, key=lambda c: (cos(c), c))


def readout_corpus(config: RunConfig, readout: Readout) -> Path | None:
    """The corpus later rounds re-read from: `concept.corpus`, else the one recorded with the readout (when
    it still exists)."""
    if config.concept.corpus is not None:
        return config.concept.corpus
    recorded = readout.meta.get("corpus")
    return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_dir() else None


def saved_direction(vector: Vector, config: RunConfig, what: str) -> Vector:
    """A saved direction as round 0's teacher: at `concept.layers` when given, without a dose, labelled with the
    run's method (what later rounds and the noise ceiling re-read it with); the saved method stays in meta."""
    layers = config.concept.layers or vector.layers
    missing = [k for k in layers if k not in vector.directions]
    if missing:
        raise SteerhealError(
            f"--concept.layers {list(layers)}: the {what} has no direction at {missing}; it has {vector.layers}"
        )
    return Vector(
        {k: vector.directions[k] for k in layers},
        {k: vector.norms[k] for k in layers},
        config.concept.method,
        vector.position,
        fingerprint=vector.fingerprint,
        meta={**vector.meta, "source": what, "saved_method": vector.method},
    )


def _prompts(config: RunConfig, tok: PreTrainedTokenizerBase) -> dict[str, object]:
    if config.model == "toyworld":
        return toyworld_prompts(config, tok)
    return neutral_prompts(config, tok, shipped_prompts(), "the shipped neutral prompts")


def _judge(config: RunConfig, name: str | None, off: str | None) -> object:
    if config.model != "toyworld":
        return None
    from steerheal.toyworld.world import MOODS

    return mood_judge(name, off) if name in MOODS and off in MOODS else None


def _corpus_concept(
    config: RunConfig,
    tok: PreTrainedTokenizerBase,
    folder: Path,
    name: str,
    label: str,
    readout: Readout | None = None,
) -> Concept:
    corpus = Corpus.load(folder)
    off = config.concept.off_target_name or (
        least_similar_row(readout, name, list(corpus.concepts))
        if readout is not None
        else least_similar_words(corpus, name)
    )
    n = config.concept.n_extract
    return Concept(
        name=f"{label} {name} (off-target {off})",
        teacher=corpus_contrast(corpus, name, n),
        off_target=corpus_contrast(corpus, off, n),
        **_prompts(config, tok),  # type: ignore[arg-type]
        judge=_judge(config, name, off),  # type: ignore[arg-type]
        corpus=corpus if config.verify.readout else None,
    )


def _readout(config: RunConfig, tok: PreTrainedTokenizerBase) -> Concept:
    c = config.concept
    assert c.readout is not None and c.name is not None  # checks.validate
    readout, _ = open_readout(c.readout)
    initial = saved_direction(readout[c.name], config, f"readout {c.readout}")
    folder = readout_corpus(config, readout)
    if folder is not None:
        concept = _corpus_concept(config, tok, folder, c.name, "readout", readout)
    else:
        off = c.off_target_name or least_similar_row(readout, c.name)
        concept = Concept(
            name=f"readout {c.name} (off-target {off})",
            teacher=None,
            off_target=None,
            **_prompts(config, tok),  # type: ignore[arg-type]
            judge=_judge(config, c.name, off),  # type: ignore[arg-type]
            off_target_vector=saved_direction(readout[off], config, f"readout {c.readout}"),
        )
    return replace(concept, initial=initial, reextract=c.reextract and folder is not None)


def _vector(config: RunConfig, tok: PreTrainedTokenizerBase) -> Concept:
    c = config.concept
    assert c.vector is not None  # checks.validate
    initial = saved_direction(Vector.load(c.vector), config, f"vector {c.vector}")
    if c.corpus is not None:
        concept = _corpus_concept(config, tok, c.corpus, c.name or "", "vector")
    elif c.persona_file is not None and c.off_target_file is not None:
        from steerheal.read.persona_files import Persona

        persona, off = Persona.load(c.persona_file), Persona.load(c.off_target_file)
        concept = persona_concept(
            config,
            tok,
            f"vector {c.vector.name} (persona {persona.name})",
            (persona.system_pos, persona.system_neg),
            (off.system_pos, off.system_neg),
            list(persona.prompts),
        )
    else:
        prompts = _prompts(config, tok)
        users = shipped_prompts() if config.model != "toyworld" else None
        extract = split_prompts(config, users, "prompts")[1] if users else _toyworld_users(config)
        off_pos, off_neg = persona_contrast(tok, BUILTIN_OFF_POS, BUILTIN_OFF_NEG, extract[: c.n_extract])
        concept = Concept(
            name=f"vector {c.vector.name} (off-target builtin formal vs casual persona)",
            teacher=None,
            off_target=Contrast(off_pos, off_neg, "prompt_end"),
            **prompts,  # type: ignore[arg-type]
            judge=None,
        )
    return replace(concept, initial=initial, reextract=c.reextract and concept.teacher is not None)


def _toyworld_users(config: RunConfig) -> list[str]:
    from steerheal.toyworld import world

    return world.neutral_prompts(config.concept.n_extract, config.seed, "extract")


def source_concept(config: RunConfig, tok: PreTrainedTokenizerBase, model: nn.Module | None = None) -> Concept:
    """The Concept of a corpus, readout or vector source (the config was checked by `checks.validate`); given
    the model, a saved direction is checked to fit it (hidden size, layers)."""
    c = config.concept
    if c.source == "corpus":
        assert c.corpus is not None and c.name is not None  # checks.validate
        concept = _corpus_concept(config, tok, c.corpus, c.name, "corpus")
    elif c.source == "readout":
        concept = _readout(config, tok)
    else:
        concept = _vector(config, tok)
    if model is not None:
        for vector in (concept.initial, concept.off_target_vector):
            if vector is not None:
                check_fits(model, c.source, vector.hidden_size, vector.layers)
                warn_if_made_for_another(vector.fingerprint, model, f"the {c.source} of {concept.name}")
    return concept
