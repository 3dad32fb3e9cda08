"""The dose walk: the largest multiple of c* whose pairs mostly survive the filters, then every pair at it.

iso-KL fixes how far steering moves the next-token distribution, not whether what it says stays coherent;
the walk lowers alpha from `alpha` by `factor` until a probe batch keeps `keep_target` of its pairs, and
fails with every keep rate it tried below `alpha_min` (no usable data: fail fast rather than train on noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.boundary import checked
from steerheal.dose.config import DoseConfig
from steerheal.dose.filters import FilterConfig
from steerheal.dose.pairs import PreferencePair, SamplingConfig, make_pairs
from steerheal.errors import SteerhealError
from steerheal.read.vector import Vector


@dataclass(frozen=True)
class DoseWalk:
    alpha: float
    keep_rates: list[tuple[float, float]]  # (alpha, keep rate) in the order tried
    probe_pairs: list[PreferencePair]  # the probe's pairs at the accepted alpha (the first prompts)


@checked
def dose_walk(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    vector: Vector,
    prompts: Sequence[str],
    config: DoseConfig = DoseConfig(),
    seed: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    filters: FilterConfig | None = None,
    include_eos: bool = True,
) -> DoseWalk:
    """The largest alpha (from `config.alpha` down by `config.walk_factor`) at which at least `config.keep_target`
    of a probe batch (`config.probe_size` prompts) survives the filters; below `config.alpha_min` a clear error
    with every keep rate tried."""
    filters = filters or FilterConfig()
    alpha, alpha_min, factor, keep_target = config.alpha, config.alpha_min, config.walk_factor, config.keep_target
    if not 0 < factor < 1 or not 0 < alpha_min <= alpha or not 0 < keep_target <= 1:
        raise SteerhealError(
            f"dose_walk: need 0 < walk_factor < 1 (got {factor}), 0 < alpha_min <= alpha (got {alpha_min}, {alpha}), "
            f"0 < keep_target <= 1 (got {keep_target})"
        )
    probe = list(prompts[: config.probe_size])
    tried: list[tuple[float, float]] = []
    current = alpha
    unsteered: list[list[int]] | None = None
    while current >= alpha_min * (1 - 1e-9):
        pairs = make_pairs(
            model, tok, vector, probe, current, seed, sampling, filters, include_eos, rejected_ids=unsteered
        )
        unsteered = [p.rejected_ids for p in pairs] if include_eos else None
        rate = sum(p.kept for p in pairs) / len(pairs)
        tried.append((current, rate))
        if rate >= keep_target:
            return DoseWalk(current, tried, pairs)
        current *= factor
    rates = ", ".join(f"alpha {a:.3g}: {r:.0%}" for a, r in tried)
    raise SteerhealError(
        f"dose walk: no usable data. Fewer than {keep_target:.0%} of {len(probe)} probe pairs survived the filters "
        f"at every alpha down to alpha_min={alpha_min} ({rates}). Lower the target KL, loosen the filters, or "
        "check the vector."
    )


@checked
def walk_and_pair(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    vector: Vector,
    prompts: Sequence[str],
    walk: DoseWalk,
    seed: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    filters: FilterConfig | None = None,
    include_eos: bool = True,
) -> list[PreferencePair]:
    """Pairs for every prompt at the walk's alpha, reusing the probe's pairs for the first prompts: equal to
    `make_pairs(prompts, walk.alpha, seed)` in one call, without sampling the probe twice."""
    done = walk.probe_pairs
    if [p.prompt for p in done] != list(prompts[: len(done)]):
        raise SteerhealError("walk_and_pair: the walk's probe was not the first prompts of this list")
    rest = list(prompts[len(done) :])
    if not rest:
        return list(done)
    more = make_pairs(model, tok, vector, rest, walk.alpha, seed, sampling, filters, include_eos, len(done))
    return [*done, *more]
