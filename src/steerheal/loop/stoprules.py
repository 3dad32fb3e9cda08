"""The stop rules checked after every round, in order, and the one-line summary of a round.

1. The coherence floor, absolute and before any ratio (a coherent student that moved nothing, or a moved one
   that babbles, must not look like success): a round that breaks it is marked `coherence_broken`.
2. The trait gain: retain must rise by at least `stop.min_trait_gain` per round (when defined).
3. `stop.max_rounds`.

The decision goes into the round's manifest, so a resumed run honours it.
"""

from __future__ import annotations

from typing import Any

from steerheal.loop.runconfig import RunConfig


def stop_rule(
    config: RunConfig, k: int, metrics: dict[str, Any], previous: dict[str, Any] | None
) -> tuple[str | None, bool]:
    """(reason to stop or None, whether the round broke the coherence floor)."""
    stop, coherence = config.stop, metrics["coherence"]
    grammar = metrics.get("truth", {}).get("student", {}).get("grammar_ok")
    broken = []
    if grammar is not None and grammar < stop.min_grammar_ok:
        broken.append(f"grammar_ok {grammar:.3f} < {stop.min_grammar_ok}")
    if coherence["distinct_2"] is not None and coherence["distinct_2"] < stop.min_distinct_2:
        broken.append(f"distinct_2 {coherence['distinct_2']:.3f} < {stop.min_distinct_2}")
    if coherence["kl_tail_p95"] is not None and coherence["kl_tail_p95"] > stop.max_kl_tail:
        broken.append(f"KL(student‖base) p95 {coherence['kl_tail_p95']:.3f} > {stop.max_kl_tail}")
    if broken:
        return "coherence floor: " + "; ".join(broken), True
    if previous is not None and metrics["retain"] is not None and previous["retain"] is not None:
        gain = metrics["retain"] - previous["retain"]
        if gain < stop.min_trait_gain:
            return f"trait gain: retain rose {gain:+.3f} < {stop.min_trait_gain} this round", False
    if k + 1 >= stop.max_rounds:
        return f"max_rounds: {stop.max_rounds} rounds done", False
    return None, False


def _f(value: float | None, digits: int = 3) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"


def summary(k: int, metrics: dict[str, Any], dose: dict[str, Any]) -> str:
    trait, coherence, direction = metrics["trait"], metrics["coherence"], metrics["direction"]
    parts = [
        f"round {k}: c*={dose['c']:.3g} alpha={dose['alpha']:.2g} kept {dose['kept']}/{dose['pairs']}",
        f"trait base {_f(trait['base'])} steered {_f(trait['steered'])} student {_f(trait['student'])}",
        f"retain {_f(metrics['retain'], 2)}",
    ]
    if "truth" in metrics:
        truth = metrics["truth"]
        parts.append(
            f"mood {_f(truth['base']['mood_rate'], 2)}/{_f(truth['steered']['mood_rate'], 2)}/"
            f"{_f(truth['student']['mood_rate'], 2)} grammar {_f(truth['student']['grammar_ok'])}"
        )
    parts.append(f"KL p95 {_f(coherence['kl_tail_p95'])}")
    parts.append(f"cos(v,v0) {_f(direction['cos_to_round0_mean'])} (ceiling {_f(direction['noise_ceiling_mean'])})")
    return " | ".join(parts)
