"""Where a run's concept comes from: the contrast texts, the prompts of each stage, and (on toyworld) the truth.

Every stage gets its own prompts, so nothing the student is trained on is used to judge it:
- extraction: contrast texts (toyworld: paired stories in the mood and neutral; persona: the same user
  prompts under two system prompts, read at the assistant tag);
- calibration and pairs: neutral prompts, a fresh draw per round for the pairs;
- verification: held-out neutral prompts, the same every round.
An off-target contrast (another mood; another persona) gives the control that should not move.
The sources that start from a saved direction (a readout's row, a Vector) are built in `sources.py`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.files import os_error
from steerheal.loop.concept_parts import (
    BUILTIN_NEG,
    BUILTIN_OFF_NEG,
    BUILTIN_OFF_POS,
    BUILTIN_POS,
    Concept,
    Contrast,
    mood_judge,
    persona_concept,
    round_teacher,
    shipped_prompts,
    toyworld_prompts,
)
from steerheal.loop.runconfig import RunConfig

__all__ = ["Concept", "Contrast", "build_concept", "round_teacher"]


def _toyworld(config: RunConfig, tok: PreTrainedTokenizerBase) -> Concept:
    from steerheal.toyworld import world

    c = config.concept
    for mood in (c.mood, c.off_target_mood):
        if mood not in (*world.MOODS, *world.TOPICS):
            raise SteerhealError(
                f"concept mood {mood!r} is not a toyworld mood or topic; choose one of {world.MOODS} or "
                f"{tuple(sorted(world.TOPICS))}"
            )
    if c.mood == c.off_target_mood:
        raise SteerhealError("concept.off_target_mood must differ from concept.mood")
    seed = config.seed

    def contrast(name: str) -> Contrast:  # a mood: paired with neutral; a topic: paired with another topic
        pair = world.contrast_set if name in world.MOODS else world.topic_contrast_set
        return Contrast(*pair(name, c.n_extract, seed), "mean")

    return Concept(
        name=f"toyworld {c.mood}",
        teacher=contrast(c.mood),
        off_target=contrast(c.off_target_mood),
        **toyworld_prompts(config, tok),
        judge=mood_judge(c.mood, c.off_target_mood),
    )


def build_concept(
    config: RunConfig, tok: PreTrainedTokenizerBase, workdir: Path | None = None, model: nn.Module | None = None
) -> Concept:
    """The run's concept, with the corpus its readouts are checked on (toyworld's own mood corpus, written
    into `workdir`, `verify.corpus`, or the corpus a corpus/readout/vector source reads). Given the model, a
    saved direction is checked to fit it."""
    concept = _concept(config, tok, model)
    if not config.verify.readout:
        return concept
    from steerheal.read.corpus import Corpus

    if config.verify.corpus is not None:
        return replace(concept, corpus=Corpus.load(config.verify.corpus))
    if config.concept.source == "toyworld" and workdir is not None:
        from steerheal.toyworld import world

        folder = workdir / "corpus"
        if not folder.is_dir():
            _write_atomically(folder, lambda tmp: world.write_corpus(tmp, seed=config.seed))
        return replace(concept, corpus=Corpus.load(folder))
    return concept


def _write_atomically(folder: Path, write: Callable[[Path], Any]) -> None:
    """Write a folder under a temporary name beside it, then rename it into place: a kill mid-write leaves
    no partial `folder` for a resumed run to use (a leftover temporary folder is removed next time)."""
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(err, folder, "write") from err


def _concept(config: RunConfig, tok: PreTrainedTokenizerBase, model: nn.Module | None) -> Concept:
    c = config.concept
    if c.source == "toyworld":
        return _toyworld(config, tok)
    if c.source in ("corpus", "readout", "vector"):
        from steerheal.loop.sources import source_concept

        return source_concept(config, tok, model)
    if c.source == "builtin":
        return persona_concept(
            config,
            tok,
            "builtin joyful vs gloomy persona",
            (BUILTIN_POS, BUILTIN_NEG),
            (BUILTIN_OFF_POS, BUILTIN_OFF_NEG),
            shipped_prompts(),
        )
    if c.source == "persona":
        from steerheal.read.persona_files import Persona

        if c.persona_file is None or c.off_target_file is None:
            raise SteerhealError("concept.source='persona' needs concept.persona_file and concept.off_target_file")
        persona, off = Persona.load(c.persona_file), Persona.load(c.off_target_file)
        return persona_concept(
            config,
            tok,
            f"persona {persona.name}",
            (persona.system_pos, persona.system_neg),
            (off.system_pos, off.system_neg),
            list(persona.prompts),
        )
    raise SteerhealError(f"concept.source={c.source!r}: use toyworld, persona, builtin, corpus, readout or vector")
