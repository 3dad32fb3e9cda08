"""Verification of a round: did the concept survive, did the trait move, did coherence hold?

Every round is judged on the same held-out neutral prompts, against a fixed reference set at round 0 on the
base model: the base's own generations, and the base steered by round 0's teacher vector at its calibrated
dose ("steered"). The student is the model with every folded round on and no steering.

- Direction wander: cos(v_round, v_0) per layer, v_round re-read from the trained student (after the
  round), beside a noise ceiling: the cosine between vectors read from two halves of the contrast set on the
  base (what re-reading alone costs; half-size sets make it a conservative, i.e. low, ceiling).
- Internalisation: v_student = mean(h_student − h_base) at the prompt end of neutral prompts;
  cos(v_student, v_teacher) and the projection of that shift on the teacher direction, per layer.
- Trait: the teacher's concept score (projection read by the base model, mean over each generation's
  tokens) of base, steered and student generations; retain = Δtrait(student) / Δtrait(steered), undefined
  (None) when |Δtrait(steered)| < retain_floor. On toyworld also the exact mood rates and a mood retain.
- Off-target: the same for a concept that should not move (another mood; another persona).
- Coherence: p95 of per-token KL(student ‖ base) on the base's greedy continuations of the held-out
  prompts; distinct-2, word 3-gram repetition and the share of looping generations; perplexity of the
  student's generations under the base; on toyworld grammar_ok.
- Readout survival (when the concept has a corpus): a mean_diff Readout re-trained on the student, per
  concept its cosine with the base readout (mean over layers) and the held-out AUROC before and after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal import dist
from steerheal.adapter.gated import GatedLoRA
from steerheal.dose.calibrate import statistic
from steerheal.dose.filters import distinct_n, is_degenerate, ngram_repetition
from steerheal.errors import SteerhealError
from steerheal.lm.generate import decode
from steerheal.lm.scoring import completion_batches, completion_token_logprobs, scored_log_probs, token_kl
from steerheal.lm.texts import encode_prompts
from steerheal.loop.concepts import Concept, Contrast
from steerheal.loop.runconfig import RunConfig
from steerheal.read.capture import capture
from steerheal.read.corpus_activations import read_corpus
from steerheal.read.quality import heldout_scores
from steerheal.read.readout import Readout
from steerheal.read.sampler import sampler
from steerheal.read.steering import steering_active
from steerheal.read.vector import Vector


@dataclass
class Generations:
    ids: list[list[int]]
    texts: list[str]


def generate(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    steering: dict[int, torch.Tensor] | None = None,
) -> Generations:
    ids = sampler().sample(
        model, tok, prompts, seed, max_new_tokens=max_new_tokens, batch_size=batch_size, steering=steering
    )
    return Generations(ids, decode(tok, ids))


def concept_score(
    model: nn.Module, adapter: GatedLoRA, tok: PreTrainedTokenizerBase, vector: Vector, texts: Sequence[str]
) -> float:
    """Mean projection of the texts on the vector, read by the base model at `mean`, over layers and texts.
    Empty generations carry no content and are left out (they are counted by the coherence metrics)."""
    nonempty = [t for t in texts if t.strip()]
    if not nonempty:
        return math.nan
    with adapter.reference("base"):
        return float(vector.project(model, tok, nonempty, position="mean").mean())


def _mean(values: dict[int, float]) -> float | None:
    """The mean over layers; None when nothing was measured (no contrast texts to re-read the teacher from)."""
    return sum(values.values()) / len(values) if values else None


def off_target_vector(model: nn.Module, tok: PreTrainedTokenizerBase, concept: Concept, teacher: Vector) -> Vector:
    """The control: a saved off-target direction, or one read from the off-target contrast on the model as it is."""
    if concept.off_target_vector is not None:
        return concept.off_target_vector
    if concept.off_target is None:
        raise SteerhealError(f"{concept.name}: no off-target contrast or direction")
    o = concept.off_target
    return Vector.train(model, tok, o.pos, o.neg, teacher.layers, teacher.method, o.position)


def cosines(a: Vector, b: Vector) -> dict[int, float]:
    return {layer: float(a.directions[layer] @ b.directions[layer]) for layer in a.layers if layer in b.directions}


def noise_ceiling(
    model: nn.Module, adapter: GatedLoRA, tok: PreTrainedTokenizerBase, contrast: Contrast, like: Vector
) -> dict[int, float]:
    """cos between vectors read from the even and odd halves of the contrast set, on the base."""
    halves = []
    with adapter.reference("base"):
        for start in (0, 1):
            pos, neg = list(contrast.pos[start::2]), list(contrast.neg[start::2])
            halves.append(Vector.train(model, tok, pos, neg, like.layers, like.method, contrast.position))
    return cosines(halves[0], halves[1])


def internalisation(
    model: nn.Module, adapter: GatedLoRA, tok: PreTrainedTokenizerBase, prompts: Sequence[str], teacher: Vector
) -> dict[str, dict[int, float]]:
    with adapter.reference("base"):
        base = capture(model, tok, prompts, teacher.layers, "prompt_end")
    student = capture(model, tok, prompts, teacher.layers, "prompt_end")
    cos, projection = {}, {}
    for layer in teacher.layers:
        shift = (student[layer] - base[layer]).mean(0)
        norm = float(shift.norm())
        cos[layer] = float(shift @ teacher.directions[layer]) / norm if norm > 0 else 0.0
        projection[layer] = float(shift @ teacher.directions[layer])
    return {"cos": cos, "projection": projection}


@torch.no_grad()
def kl_tail(
    model: nn.Module,
    adapter: GatedLoRA,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    n_tokens: int,
    batch_size: int,
) -> float:
    """p95 of per-token KL(student ‖ base), scored on the base's greedy continuations of the prompts (each rank
    scores its batches; the p95 is taken over the values of all of them)."""
    prompt_ids = encode_prompts(tok, prompts)
    with adapter.reference("base"):
        continuations = sampler().sample(
            model, tok, prompts, temperature=0, max_new_tokens=n_tokens, batch_size=batch_size
        )
    items = completion_batches(tok, prompt_ids, continuations, batch_size)
    values = {}
    for i in dist.mine(len(items)):
        with adapter.reference("base"):
            base = scored_log_probs(model, items[i])
        values[i] = token_kl(scored_log_probs(model, items[i]), base, "rev")
    return statistic(torch.cat(dist.gather_indexed(values, len(items))), "p95")


def perplexity_under_base(
    model: nn.Module,
    adapter: GatedLoRA,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    generations: Generations,
    batch_size: int,
) -> float:
    prompt_ids = encode_prompts(tok, prompts)
    rows = [(p, c) for p, c in zip(prompt_ids, generations.ids, strict=True) if c]
    if not rows:
        return math.inf
    with adapter.reference("base"):
        logprobs = completion_token_logprobs(model, tok, [p for p, _ in rows], [c for _, c in rows], batch_size)
    return math.exp(-float(torch.cat(logprobs).mean()))


def text_metrics(generations: Generations) -> dict[str, float]:
    texts = generations.texts
    return {
        "distinct_2": distinct_n(texts, 2),
        "word_repetition": sum(ngram_repetition(t.split(), 3) for t in texts) / len(texts),
        "loop_fraction": sum(is_degenerate(ids) for ids in generations.ids) / len(generations.ids),
        "empty_fraction": sum(not t.strip() for t in texts) / len(texts),
    }


def retain(student: float, base: float, steered: float, floor: float) -> float | None:
    """Δtrait(student) / Δtrait(steered); None (undefined) when steering moved the trait less than `floor`."""
    delta = steered - base
    if not math.isfinite(delta) or abs(delta) < floor or not math.isfinite(student):
        return None
    return (student - base) / delta


@dataclass
class BaseReadout:
    acts: Any  # readout.CorpusActivations of the base
    readout: Any  # readout.Readout fitted on the base
    auroc: dict[str, float]


def _heldout_auroc(readout: Any, acts: Any, corpus: Any, seed: int) -> dict[str, float]:
    scores = heldout_scores(readout, acts, corpus, 0.3, seed)
    return {c: sum(scores[layer][c][0] for layer in scores) / len(scores) for c in readout.concepts}


def base_readout(
    model: nn.Module, adapter: GatedLoRA, tok: PreTrainedTokenizerBase, corpus: Any, layers: list[int], seed: int
) -> BaseReadout:
    with adapter.reference("base"):
        acts = read_corpus(model, tok, corpus, layers, "mean")
    readout = Readout.fit(acts, corpus, "mean_diff")
    return BaseReadout(acts, readout, _heldout_auroc(readout, acts, corpus, seed))


def readout_survival(
    model: nn.Module, tok: PreTrainedTokenizerBase, corpus: Any, base: BaseReadout, seed: int
) -> dict[str, Any]:
    acts = read_corpus(model, tok, corpus, base.readout.layers, "mean")
    student = Readout.fit(acts, corpus, "mean_diff")
    layers = base.readout.layers
    cos = {
        c: sum(float(base.readout.vectors[k][j] @ student.vectors[k][j]) for k in layers) / len(layers)
        for j, c in enumerate(student.concepts)
    }
    auroc = _heldout_auroc(student, acts, corpus, seed)
    return {
        "cos": cos,
        "cos_mean": sum(cos.values()) / len(cos),
        "auroc_base": base.auroc,
        "auroc_student": auroc,
        "auroc_base_mean": sum(base.auroc.values()) / len(base.auroc),
        "auroc_student_mean": sum(auroc.values()) / len(auroc),
    }


@dataclass
class Reference:
    """What every round is compared with, set once at round 0 on the base model."""

    teacher: Vector  # round 0's vector, coeff = the dose the steered reference used
    off_target: Vector
    ceiling: dict[int, float]
    base: Generations
    steered: Generations
    scores: dict[str, float]  # trait / off-target scores and judged metrics of base and steered
    judged: dict[str, dict[str, float]]
    readout: BaseReadout | None = None


def build_reference(
    model: nn.Module,
    adapter: GatedLoRA,
    tok: PreTrainedTokenizerBase,
    concept: Concept,
    teacher: Vector,
    seed: int,
    config: RunConfig,
) -> Reference:
    """Base and steered generations of the held-out prompts, their scores, the off-target vector and the
    noise ceiling, all on the base model (every gate 0)."""
    prompts = concept.eval_prompts
    max_new_tokens, batch_size = config.verify.max_new_tokens, config.sampling.batch_size
    with adapter.reference("base"):
        off = off_target_vector(model, tok, concept, teacher)
        base = generate(model, tok, prompts, seed, max_new_tokens, batch_size)
        steered = generate(model, tok, prompts, seed, max_new_tokens, batch_size, teacher.shifts())
    scores = {
        "trait_base": concept_score(model, adapter, tok, teacher, base.texts),
        "trait_steered": concept_score(model, adapter, tok, teacher, steered.texts),
        "off_target_base": concept_score(model, adapter, tok, off, base.texts),
        "off_target_steered": concept_score(model, adapter, tok, off, steered.texts),
    }
    judged = {}
    if concept.judge is not None:
        judged = {"base": concept.judge(base.texts), "steered": concept.judge(steered.texts)}
    ceiling = noise_ceiling(model, adapter, tok, concept.teacher, teacher) if concept.teacher is not None else {}
    readout = None
    if concept.corpus is not None:
        readout = base_readout(model, adapter, tok, concept.corpus, teacher.layers, seed)
    return Reference(teacher, off, ceiling, base, steered, scores, judged, readout)


def verify_round(
    model: nn.Module,
    adapter: GatedLoRA,
    tok: PreTrainedTokenizerBase,
    concept: Concept,
    reference: Reference,
    seed: int,
    config: RunConfig,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(metrics, samples) of the student as the model is now (every folded round on, no steering); the held-out
    generation length, batch size, KL probe length, retain floor and sample count come from `config`."""
    max_new_tokens, batch_size, n_tokens = (
        config.verify.max_new_tokens,
        config.sampling.batch_size,
        config.dose.n_tokens,
    )
    retain_floor, n_samples = config.verify.retain_floor, config.verify.n_samples
    if steering_active(model):
        raise SteerhealError("verify: a steering hook is active; the student must be judged unsteered")
    prompts = concept.eval_prompts
    teacher = concept.teacher
    vector = (
        Vector.train(
            model, tok, teacher.pos, teacher.neg, reference.teacher.layers, reference.teacher.method, teacher.position
        )
        if teacher is not None
        else None
    )
    student = generate(model, tok, prompts, seed, max_new_tokens, batch_size)
    s = reference.scores
    trait = concept_score(model, adapter, tok, reference.teacher, student.texts)
    off = concept_score(model, adapter, tok, reference.off_target, student.texts)
    wander = cosines(vector, reference.teacher) if vector is not None else {}
    inside = internalisation(model, adapter, tok, prompts, reference.teacher)
    metrics: dict[str, Any] = {
        "trait": {"base": s["trait_base"], "steered": s["trait_steered"], "student": trait},
        "retain": retain(trait, s["trait_base"], s["trait_steered"], retain_floor),
        "off_target": {
            "base": s["off_target_base"],
            "steered": s["off_target_steered"],
            "student": off,
            "moved": off - s["off_target_base"],
        },
        "direction": {
            "cos_to_round0": wander,
            "noise_ceiling": reference.ceiling,
            "cos_to_round0_mean": _mean(wander),
            "noise_ceiling_mean": _mean(reference.ceiling),
        },
        "internalisation": {**inside, "cos_mean": sum(inside["cos"].values()) / len(inside["cos"])},
        "coherence": {
            "kl_tail_p95": kl_tail(model, adapter, tok, prompts, n_tokens, batch_size),
            "ppl_under_base": perplexity_under_base(model, adapter, tok, prompts, student, batch_size),
            **text_metrics(student),
        },
        "coherence_base": text_metrics(reference.base),
        "coherence_steered": text_metrics(reference.steered),
    }
    if reference.readout is not None:
        metrics["readout"] = readout_survival(model, tok, concept.corpus, reference.readout, seed)
    if concept.judge is not None:
        judged = concept.judge(student.texts)
        base, steered = reference.judged["base"], reference.judged["steered"]
        metrics["truth"] = {"base": base, "steered": steered, "student": judged}
        metrics["retain_mood"] = retain(judged["mood_rate"], base["mood_rate"], steered["mood_rate"], 0.02)
    samples = [
        {"prompt": p, "base": b, "steered": st, "student": stu}
        for p, b, st, stu in list(
            zip(prompts, reference.base.texts, reference.steered.texts, student.texts, strict=True)
        )[:n_samples]
    ]
    return metrics, samples
