"""What a run distils: the Concept (teacher and off-target contrasts or saved directions, the prompts of each
stage, the judge), its teacher in round k, and the prompt sets and persona contrasts every source shares.

Split from `concepts.py` (which picks the source) so that `sources.py` builds on these without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
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


def templated(tok: PreTrainedTokenizerBase, users: list[str]) -> list[str]:
    if tok.chat_template is None:
        return list(users)
    return [
        tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
        for u in users
    ]


def mood_judge(mood: str, off_target_mood: str) -> Callable[[list[str]], dict[str, float]]:
    """toyworld's exact metrics of completions: the target's and the off-target's mood rate, grammar_ok. A target
    that is a topic has its share of nouns as its `mood_rate` (the target's exact rate, whichever it is)."""
    from steerheal.toyworld.metrics import grammar_ok, target_rates

    def judge(texts: list[str]) -> dict[str, float]:
        rates = target_rates(texts)
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
    """Calibration, per-round training and held-out prompts split from one list (`split_prompts`), templated."""
    calibration, train, held_out = split_prompts(config, prompts, what)

    def train_prompts(round_: int) -> list[str]:
        return templated(tok, [train[(round_ * config.n_pairs + i) % len(train)] for i in range(config.n_pairs)])

    return {
        "calibration_prompts": templated(tok, calibration),
        "eval_prompts": templated(tok, held_out),
        "eval_users": list(held_out),
        "train_prompts": train_prompts,
    }


def split_prompts(config: RunConfig, prompts: list[str], what: str) -> tuple[list[str], list[str], list[str]]:
    """(calibration, train, eval) from one prompt list, disjoint: calibration from the start, eval held out at the
    end, training in between (nothing the student is trained on or dosed with is used to judge it)."""
    n_eval, n_cal = config.verify.n_prompts, config.dose.n_prompts
    if len(prompts) < n_eval + n_cal + 2:
        raise SteerhealError(
            f"{what} has {len(prompts)} prompts; the run needs verify.n_prompts={n_eval} held out, "
            f"dose.n_prompts={n_cal} for calibration and at least 2 more for pairs. Add prompts or lower those numbers."
        )
    return prompts[:n_cal], prompts[n_cal : len(prompts) - n_eval], prompts[len(prompts) - n_eval :]


def persona_concept(
    config: RunConfig,
    tok: PreTrainedTokenizerBase,
    name: str,
    pos: tuple[str, str],
    off: tuple[str, str],
    prompts: list[str],
) -> Concept:
    _, train, _ = split_prompts(config, prompts, name)
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
