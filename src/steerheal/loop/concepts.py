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
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.files import os_error
from steerheal.lm.texts import Text
from steerheal.loop.runconfig import RunConfig
from steerheal.read.persona import persona_contrast
from steerheal.read.vector import Vector

BUILTIN_POS = "You are joyful, warm and full of delight."
BUILTIN_NEG = "You are gloomy, cold and full of dread."
BUILTIN_OFF_POS = "You are formal, precise and terse."
BUILTIN_OFF_NEG = "You are casual, chatty and loose."


@dataclass(frozen=True)
class Contrast:
    pos: list[Text]
    neg: list[Text]
    position: str


@dataclass(frozen=True)
class Concept:
    name: str
    teacher: Contrast | None  # the texts the teacher is (re-)read from; None: only the saved `initial` direction
    off_target: Contrast | None  # None: `off_target_vector` is the control
    calibration_prompts: list[str]
    eval_prompts: list[str]
    train_prompts: Callable[[int], list[str]]  # round -> the prompts of that round's pairs
    judge: Callable[[list[str]], dict[str, float]] | None  # exact metrics of completions, where truth is known
    corpus: Any = None  # a Corpus to check readout survival on, or None
    eval_users: list[str] | None = (
        None  # the held-out prompts as the user wrote them (no chat template): judges read these
    )
    initial: Vector | None = None  # round 0's direction when it is saved (a readout's row, a Vector)
    reextract: bool = True  # with `initial`: later rounds re-read the teacher on the student from `teacher`
    off_target_vector: Vector | None = None  # a saved off-target direction (a readout's other row)


def round_teacher(
    concept: Concept, model: nn.Module, tok: PreTrainedTokenizerBase, config: RunConfig, k: int
) -> Vector:
    """Round k's teacher direction: the saved one in round 0 (and every round without re-extraction), else read
    from the contrast on the model as it is now (the student, every folded round on), at the saved direction's
    layers when there is one."""
    initial = concept.initial
    if initial is not None and (k == 0 or not concept.reextract or concept.teacher is None):
        return Vector(
            dict(initial.directions),
            dict(initial.norms),
            initial.method,
            initial.position,
            fingerprint=initial.fingerprint,
            meta=dict(initial.meta),
        )
    if concept.teacher is None:
        raise SteerhealError(f"{concept.name}: no contrast texts to read the teacher from")
    layers = initial.layers if initial is not None else config.concept.layers
    t = concept.teacher
    return Vector.train(model, tok, t.pos, t.neg, layers, config.concept.method, t.position)


def _templated(tok: PreTrainedTokenizerBase, users: list[str]) -> list[str]:
    if tok.chat_template is None:
        return list(users)
    return [
        tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
        for u in users
    ]


def _toyworld(config: RunConfig, tok: PreTrainedTokenizerBase) -> Concept:
    from steerheal.toyworld import world

    c = config.concept
    for mood in (c.mood, c.off_target_mood):
        if mood not in world.MOODS:
            raise SteerhealError(f"concept mood {mood!r} is not a toyworld mood; choose one of {world.MOODS}")
    if c.mood == c.off_target_mood:
        raise SteerhealError("concept.off_target_mood must differ from concept.mood")
    seed = config.seed
    return Concept(
        name=f"toyworld {c.mood}",
        teacher=Contrast(*world.contrast_set(c.mood, c.n_extract, seed), "mean"),
        off_target=Contrast(*world.contrast_set(c.off_target_mood, c.n_extract, seed), "mean"),
        **toyworld_prompts(config, tok),
        judge=mood_judge(c.mood, c.off_target_mood),
    )


def mood_judge(mood: str, off_target_mood: str) -> Callable[[list[str]], dict[str, float]]:
    """toyworld's exact metrics of completions: the target's and the off-target's mood rate, grammar_ok."""
    from steerheal.toyworld.metrics import grammar_ok, mood_rates

    def judge(texts: list[str]) -> dict[str, float]:
        rates = mood_rates(texts)
        return {
            "mood_rate": rates[mood],
            "off_target_mood_rate": rates[off_target_mood],
            "grammar_ok": sum(map(grammar_ok, texts)) / len(texts),
        }

    return judge


def toyworld_prompts(config: RunConfig, tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """toyworld's neutral prompts of each stage, on separate streams (eval from held-out combinations)."""
    from steerheal.toyworld import world
    from steerheal.toyworld.load import chat_prompts

    seed = config.seed
    return {
        "calibration_prompts": chat_prompts(tok, world.neutral_prompts(config.dose.n_prompts, seed, "calibration")),
        "eval_prompts": chat_prompts(tok, world.neutral_prompts(config.verify.n_prompts, seed, "eval")),
        "eval_users": world.neutral_prompts(config.verify.n_prompts, seed, "eval"),
        "train_prompts": lambda round_: chat_prompts(
            tok, world.neutral_prompts(config.n_pairs, seed, f"train{round_}")
        ),
    }


def shipped_prompts() -> list[str]:
    """steerheal's 280 neutral user prompts (data/neutral_prompts.txt)."""
    text = resources.files("steerheal.data").joinpath("neutral_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def neutral_prompts(config: RunConfig, tok: PreTrainedTokenizerBase, prompts: list[str], what: str) -> dict[str, Any]:
    """Calibration, per-round training and held-out prompts split from one list (`_split_prompts`), templated."""
    calibration, train, held_out = _split_prompts(config, prompts, what)

    def train_prompts(round_: int) -> list[str]:
        return _templated(tok, [train[(round_ * config.n_pairs + i) % len(train)] for i in range(config.n_pairs)])

    return {
        "calibration_prompts": _templated(tok, calibration),
        "eval_prompts": _templated(tok, held_out),
        "eval_users": list(held_out),
        "train_prompts": train_prompts,
    }


def _split_prompts(config: RunConfig, prompts: list[str], what: str) -> tuple[list[str], list[str], list[str]]:
    """(calibration, train, eval) from one prompt list, disjoint: calibration from the start, eval held out at the
    end, training in between (nothing the student is trained on or dosed with is used to judge it)."""
    n_eval, n_cal = config.verify.n_prompts, config.dose.n_prompts
    if len(prompts) < n_eval + n_cal + 2:
        raise SteerhealError(
            f"{what} has {len(prompts)} prompts; the run needs verify.n_prompts={n_eval} held out, "
            f"dose.n_prompts={n_cal} for calibration and at least 2 more for pairs. Add prompts or lower those numbers."
        )
    return prompts[:n_cal], prompts[n_cal : len(prompts) - n_eval], prompts[len(prompts) - n_eval :]


def _persona_concept(
    config: RunConfig,
    tok: PreTrainedTokenizerBase,
    name: str,
    pos: tuple[str, str],
    off: tuple[str, str],
    prompts: list[str],
) -> Concept:
    _, train, _ = _split_prompts(config, prompts, name)
    extract = train[: config.concept.n_extract]  # the teacher is read from the training prompts only
    pos_texts, neg_texts = persona_contrast(tok, *pos, extract)
    off_pos, off_neg = persona_contrast(tok, *off, extract)
    return Concept(
        name=name,
        teacher=Contrast(pos_texts, neg_texts, "prompt_end"),
        off_target=Contrast(off_pos, off_neg, "prompt_end"),
        **neutral_prompts(config, tok, prompts, name),
        judge=None,
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
        return _persona_concept(
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
        return _persona_concept(
            config,
            tok,
            f"persona {persona.name}",
            (persona.system_pos, persona.system_neg),
            (off.system_pos, off.system_neg),
            list(persona.prompts),
        )
    raise SteerhealError(f"concept.source={c.source!r}: use toyworld, persona, builtin, corpus, readout or vector")
