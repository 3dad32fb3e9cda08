"""What the shipped toyworld model shows, measured: `just toyworld-report` writes docs/toyworld.md from it.

1. Unsteered stories for neutral prompts: grammar, topic, and mood rates against the training rates.
2. Persona system prompts: each mood's rate under its persona against unsteered.
3. Steering with a joy vector read several ways (raw paired stories at `mean` and `last`, persona
   prompts at `prompt_end`), at single layers and the default middle third, swept over strengths given
   as multiples of the mean residual norm at the steered layers: joy rate, grammar, topic, distinct-2.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from steerheal.dose.filters import distinct_n
from steerheal.lm.blocks import n_layers
from steerheal.read.capture import residual_norm
from steerheal.read.persona import persona_contrast
from steerheal.read.vector import Vector, default_layers
from steerheal.toyworld.load import chat_prompts, sample
from steerheal.toyworld.metrics import grammar_ok, mood_rates, topic_consistency
from steerheal.toyworld.world import (
    BASE_MOODS,
    MOOD_WORD_P,
    MOODS,
    NEUTRAL,
    PERSONAS,
    contrast_set,
    neutral_prompts,
)


def expected_rates() -> dict[str, float]:
    """Word-level mood rates of un-prompted training stories: P(mood) x MOOD_WORD_P, the rest neutral."""
    rates = {m: BASE_MOODS[m] * MOOD_WORD_P for m in MOODS}
    rates[NEUTRAL] = 1 - sum(rates.values())
    return rates


def story_metrics(stories: Sequence[str], topics: Sequence[str]) -> dict[str, float]:
    n = len(stories)
    return {
        "grammar_ok": sum(grammar_ok(s) for s in stories) / n,
        "topic": sum(topic_consistency(s, t) for s, t in zip(stories, topics, strict=True)) / n,
        "distinct_2": distinct_n(stories, 2),
        **{f"rate_{m}": r for m, r in mood_rates(stories).items()},
    }


def prompt_topics(n: int, seed: int, split: str = "eval") -> list[str]:
    return [p.split()[-2] for p in neutral_prompts(n, seed, split)]


def joy_vectors(model: nn.Module, tok: PreTrainedTokenizerBase, seed: int, n_pairs: int = 64) -> dict[str, Vector]:
    """Joy vectors read three ways, at each single layer and at the default layers."""
    pos_raw, neg_raw = contrast_set("joy", n_pairs, seed)
    users = neutral_prompts(n_pairs, seed, split="calibration")
    pos_persona, neg_persona = persona_contrast(tok, PERSONAS["joy"], PERSONAS[NEUTRAL], users)
    sources = {
        "stories@mean": (pos_raw, neg_raw, "mean"),
        "stories@last": (pos_raw, neg_raw, "last"),
        "persona@prompt_end": (pos_persona, neg_persona, "prompt_end"),
    }
    layer_sets = [(layer,) for layer in range(n_layers(model))]
    layer_sets.append(tuple(default_layers(model)))
    out = {}
    for name, (pos, neg, position) in sources.items():
        for layers in layer_sets:
            out[f"{name} L{','.join(map(str, layers))}"] = Vector.train(
                model, tok, pos, neg, list(layers), "mean_diff", position
            )
    return out


def prompt_norm(model: nn.Module, tok: PreTrainedTokenizerBase, layers: Sequence[int], seed: int) -> float:
    """Mean per-token residual norm at `layers` over neutral templated prompts: the unit of strengths."""
    return residual_norm(model, tok, chat_prompts(tok, neutral_prompts(32, seed, split="calibration")), layers)


def steering_sweep(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    vectors: dict[str, Vector],
    multiples: Sequence[float],
    n: int,
    seed: int,
) -> pl.DataFrame:
    topics = prompt_topics(n, seed)
    rows = []
    for name, vector in tqdm(vectors.items(), desc="steering sweep"):
        norm = prompt_norm(model, tok, vector.layers, seed)
        vector.coeff = norm
        for k in multiples:
            stories = sample(model, tok, n, seed, vector=vector, alpha=k)
            rows.append({"vector": name, "strength": k, "C": norm * k, **story_metrics(stories, topics)})
    return pl.DataFrame(rows)


def persona_table(model: nn.Module, tok: PreTrainedTokenizerBase, n: int, seed: int) -> pl.DataFrame:
    topics = prompt_topics(n, seed)
    rows = [{"system": "(none)", **story_metrics(sample(model, tok, n, seed), topics)}]
    for mood, system in PERSONAS.items():
        rows.append(
            {"system": f"{mood}: {system}", **story_metrics(sample(model, tok, n, seed, system=system), topics)}
        )
    return pl.DataFrame(rows)
