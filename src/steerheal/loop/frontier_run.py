"""The frontier of a run: after its last round (`verify.frontier`), and on demand (`steerheal frontier RUN`,
`steerheal dial RUN --g ...`).

Steering is round 0's teacher vector at α · c* (its calibrated dose, on the base); the student is the saved
adapter at dial g; both are judged on the run's held-out prompts with one seed. The judges are chosen by the
concept: toyworld's exact mood rate and grammar where the truth is known; elsewhere VADER for the
joyful/gloomy trait, all-MiniLM-L6-v2 for relevance and, with `verify.judge_model`, an independent model's
bits per byte for coherence. The result is one `frontier` event in events.jsonl, so the report redraws it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.adapter.gated import GatedLoRA
from steerheal.judges.coherence import CoherenceJudge
from steerheal.judges.frontier import FrontierConfig, frontier
from steerheal.judges.judge import Judge
from steerheal.judges.relevance import RelevanceJudge
from steerheal.judges.trait import VaderJudge
from steerheal.judges.truth import ToyworldJudge
from steerheal.log import logger, stage
from steerheal.loop.concepts import Concept
from steerheal.loop.model_spec import open_model
from steerheal.loop.runconfig import RunConfig
from steerheal.loop.rundir import RunDir
from steerheal.read.vector import Vector
from steerheal.seeds import derived_seed

BUILTIN_SOURCES = ("builtin",)  # the joyful/gloomy persona: VADER reads that trait


def frontier_setup(config: RunConfig) -> tuple[dict[str, Judge], FrontierConfig]:
    """The judges for this run's concept and the frontier's settings (held-out generation length and batch)."""
    base = FrontierConfig(max_new_tokens=config.verify.max_new_tokens, batch_size=config.sampling.batch_size)
    c = config.concept
    if c.source == "toyworld":
        judges: dict[str, Judge] = {"toyworld": ToyworldJudge(c.mood, c.off_target_mood)}
        return judges, replace(base, trait="toyworld.mood_rate", coherence="toyworld.grammar_ok", relevance=None)
    judges = {"vader": VaderJudge(), "relevance": RelevanceJudge()}
    coherence = None
    if config.verify.judge_model is not None:
        judge_model, judge_tok = open_model(config.verify.judge_model, None, config.device, config.seed)
        judges["coherence"] = CoherenceJudge(judge_model, judge_tok)
        coherence = "coherence.bits_per_byte"
    if c.source not in BUILTIN_SOURCES:
        logger.warning(
            f"frontier: concept source {c.source!r} is judged by VADER's sentiment, which measures the builtin "
            "joyful/gloomy trait; read its trait axis with care for another concept"
        )
    return judges, replace(base, coherence=coherence)


def teacher_at_c_star(run: RunDir, model: nn.Module) -> Vector:
    """Round 0's teacher vector with its calibrated dose c* (the pairs may have used α · c*)."""
    return Vector.load(run.round_dir(0), model=model)


def has_frontier(run: RunDir) -> bool:
    return any(e.get("event") == "frontier" for e in run.events())


def run_frontier(
    run: RunDir,
    config: RunConfig,
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    adapter: GatedLoRA,
    concept: Concept,
    round: int,
    alphas: tuple[float, ...] | None = None,
    dials: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Compute the frontier of the student after `round` and log it as a `frontier` event; returns it."""
    judges, settings = frontier_setup(config)
    if alphas is not None:
        settings = replace(settings, alphas=alphas)
    if dials is not None:
        settings = replace(settings, dials=dials)
    with stage("frontier"):
        result = frontier(
            model,
            tok,
            adapter,
            teacher_at_c_star(run, model),
            concept.eval_prompts,
            derived_seed("frontier", config.seed, bits=32),
            settings,
            judges,
            concept.eval_users,
        )
    run.log({"event": "frontier", "round": round, "frontier": result})
    summary = result.get("summary", {})
    logger.info(f"frontier after round {round}: {summary.get('reading') or summary}")
    return result
