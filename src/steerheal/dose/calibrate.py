"""iso-KL calibration: the dose c* at which steering moves the next-token distribution by a target in nats.

What is scored: each prompt's *unsteered greedy continuation* (`n_tokens`), generated once. At every
position that predicts a continuation token, KL(steered ‖ unsteered) is taken teacher-forced, from the
same model with steering on and off, in float32. Because the scored tokens are fixed, the pooled
statistic (p95, mean, rmse or max over all scored tokens of all prompts) is a smooth function of the
dose, and a root finder converges.

The search works on x = log c. For small doses KL grows like c² (the first-order term of a KL vanishes),
so log stat is close to linear in log c with slope 2: the search starts at a quarter of the residual norm
at the vector's layers (a relative dose: norms differ fifty-fold between architectures), extrapolates
with the local slope (2 until two points give a secant, clipped to [0.5, 4]; each step at least 1.5x and
at most 16x) until the target is bracketed, then runs the Illinois variant of regula falsi on
log(stat/target), falling back to a bisection step whenever the interpolate leaves the inner 90% of the
bracket. `method="bisect"` is the benchmark baseline: plain bisection on c over [0, 4 x residual norm], as
earlier projects calibrated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal import dist
from steerheal.dose.config import DoseConfig
from steerheal.dose.filters import is_degenerate
from steerheal.errors import SteerhealError
from steerheal.lm.scoring import CompletionBatch, completion_batches, scored_log_probs, token_kl
from steerheal.lm.texts import Text, encode_prompts
from steerheal.log import logger
from steerheal.read.capture import residual_norm
from steerheal.read.sampler import sampler
from steerheal.read.vector import Vector

STATS = ("p95", "mean", "rmse", "max")
METHODS = ("illinois", "bisect")
START_FRACTION = 0.25  # first dose = this x mean residual norm at the vector's layers
MAX_EVALS = 40
BISECT_RANGE = 16.0  # the bisection baseline searches [0, 16 x start] = [0, 4 x residual norm]
BASE_CACHE_BYTES = 512 * 2**20  # cache unsteered log-probs when they fit; else recompute per evaluation

Steer = Callable[[float], AbstractContextManager[Any]]


def statistic(values: Float[Tensor, " n"], stat: str) -> float:
    """A pooled statistic of per-token KL values (p95 by linear interpolation)."""
    if stat == "p95":
        return float(torch.quantile(values.double(), 0.95))
    if stat == "mean":
        return float(values.double().mean())
    if stat == "rmse":
        return float(values.double().square().mean().sqrt())
    if stat == "max":
        return float(values.max())
    raise SteerhealError(f"stat={stat!r}: use one of {list(STATS)}")


@dataclass
class Probe:
    """Fixed scored tokens: prompts with their unsteered greedy continuations, in left-padded batches. Under a
    multi-process launch each rank scores the batches `dist.mine` gives it, and the values are gathered."""

    items: list[CompletionBatch]
    base: dict[int, Tensor] | None  # unsteered log-probs at the scored positions of this rank's batches, if cached
    n_scored: int
    mine: list[int] = field(default_factory=list)  # the batches this rank scores


@torch.no_grad()
def build_probe(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    n_tokens: int,
    batch_size: int = 16,
) -> Probe:
    """Generate each prompt's greedy continuation once, and lay out the positions that score it."""
    prompt_ids = encode_prompts(tok, prompts)
    continuations = sampler().sample(model, tok, prompts, temperature=0, max_new_tokens=n_tokens, batch_size=batch_size)
    items = completion_batches(tok, prompt_ids, continuations, batch_size)
    n_scored = int(sum(item.scored.sum() for item in items))
    mine = dist.mine(len(items))
    vocab = model.get_output_embeddings().weight.shape[0]
    cache = int(sum(items[i].scored.sum() for i in mine)) * vocab * 4 <= BASE_CACHE_BYTES
    base = {i: scored_log_probs(model, items[i]) for i in mine} if cache else None
    if not cache:
        logger.info(f"calibrate: {n_scored} x {vocab} unsteered log-probs exceed the cache budget; recomputing them")
    return Probe(items, base, n_scored, mine)


@torch.no_grad()
def kl_values(model: nn.Module, probe: Probe, steer: Steer, C: float) -> Float[Tensor, " n_scored"]:
    """Per-token KL(steered ‖ unsteered) at every scored position, steering at strength C: each rank scores its
    batches and the values of all are gathered in batch order (the statistic is pooled over all of them)."""
    values = {}
    for i in probe.mine:
        item = probe.items[i]
        base = probe.base[i] if probe.base is not None else scored_log_probs(model, item)
        with steer(C):
            steered = scored_log_probs(model, item)
        values[i] = token_kl(steered, base, "rev")
    return torch.cat(dist.gather_indexed(values, len(probe.items)))


@dataclass
class DoseSearch:
    """The result of a search: the dose, the statistic there, and every (c, statistic) evaluated."""

    c: float
    value: float
    history: list[tuple[float, float]] = field(default_factory=list)

    @property
    def n_evals(self) -> int:
        return len(self.history)


def _clip(step: float, low: float, high: float) -> float:
    return math.copysign(min(max(abs(step), low), high), step)


def search(
    evaluate: Callable[[float], float],
    target: float,
    start: float,
    tol: float,
    method: str = "illinois",
    max_evals: int = MAX_EVALS,
) -> DoseSearch:
    """Find c > 0 with |evaluate(c) / target − 1| <= tol, evaluate increasing in c (see module docstring)."""
    if method not in METHODS:
        raise SteerhealError(f"method={method!r}: use one of {list(METHODS)}")
    history: list[tuple[float, float]] = []

    def g(x: float) -> float:
        if len(history) >= max_evals:
            raise SteerhealError(
                f"calibration did not reach the target within {max_evals} evaluations; history (c, stat): "
                f"{[(round(c, 4), round(v, 4)) for c, v in history]}"
            )
        value = evaluate(math.exp(x))
        history.append((math.exp(x), value))
        return math.log(max(value, 1e-12) / target)

    def done() -> DoseSearch | None:
        c, value = history[-1]
        return DoseSearch(c, value, history) if abs(value / target - 1) <= tol else None

    if method == "bisect":
        return _bisect(g, done, start)
    # 1. bracket: log(stat/target) changes sign between lo and hi
    x, gx = math.log(start), g(math.log(start))
    if result := done():
        return result
    points = [(x, gx)]
    while True:
        slope = 2.0
        if len(points) >= 2 and points[-1][0] != points[-2][0]:
            slope = min(max((points[-1][1] - points[-2][1]) / (points[-1][0] - points[-2][0]), 0.5), 4.0)
        x_new = x + _clip(-gx / slope, math.log(1.5), math.log(16.0))
        if x_new > math.log(start) + math.log(1e4):
            raise _unreachable(target, history)
        g_new = g(x_new)
        if result := done():
            return result
        points.append((x_new, g_new))
        if (g_new > 0) != (gx > 0):
            lo, hi = sorted([(x, gx), (x_new, g_new)])
            break
        # stopped rising: fell twice in a row while still below the target (a flat stretch is not enough:
        # the expansion goes on to its cap, where a truly unreachable target is reported)
        if len(points) >= 3 and g_new < 0 and g_new < points[-2][1] < points[-3][1]:
            raise _unreachable(target, history)
        x, gx = x_new, g_new

    # 2. Illinois inside the bracket, with a bisection step when the interpolate hugs an end
    side = 0
    (a, ga), (b, gb) = lo, hi
    while True:
        x = b - gb * (b - a) / (gb - ga)
        inner = 0.05 * (b - a)
        if not a + inner <= x <= b - inner:
            x = (a + b) / 2
        gx = g(x)
        if result := done():
            return result
        if gx < 0:
            a, ga = x, gx
            if side == -1:
                gb /= 2  # Illinois: the other end stayed twice, halve its weight
            side = -1
        else:
            b, gb = x, gx
            if side == 1:
                ga /= 2
            side = 1


def _bisect(g: Callable[[float], float], done: Callable[[], DoseSearch | None], start: float) -> DoseSearch:
    """The baseline: plain bisection on c over [0, BISECT_RANGE x start], as earlier projects did."""
    lo, hi = 0.0, BISECT_RANGE * start
    while True:
        c = (lo + hi) / 2
        above = g(math.log(c)) > 0
        if result := done():
            return result
        lo, hi = (lo, c) if above else (c, hi)


def _unreachable(target: float, history: list[tuple[float, float]]) -> SteerhealError:
    best = max(v for _, v in history)
    return SteerhealError(
        f"target_kl={target} is above what this statistic reaches: the largest value seen was {best:.4g} (doses up "
        f"to {max(c for c, _ in history):.4g}, {len(history)} evaluations); lower target_kl"
    )


@dataclass
class Dose:
    """A calibrated dose, as recorded on a Vector (`v.calibration`)."""

    coeff: float  # signed: sign * c
    record: dict[str, Any]


def find_dose(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    steer: Steer,
    layers: Sequence[int],
    target_kl: float = 1.0,
    stat: str = "p95",
    n_tokens: int = 20,
    tol: float = 0.05,
    sign: int = 1,
    method: str = "illinois",
    batch_size: int = 16,
    liveness_samples: int = 16,
    liveness_tokens: int = 48,
    seed: int = 0,
) -> Dose:
    """The dose for a steering function `steer(C)` acting at `layers` (validated before any model call)."""
    if len(prompts) == 0:
        raise SteerhealError("calibrate: prompts is empty; pass the neutral prompts to score the dose on")
    if stat not in STATS:
        raise SteerhealError(f"calibrate: stat={stat!r}; use one of {list(STATS)}")
    if method not in METHODS:
        raise SteerhealError(f"calibrate: method={method!r}; use one of {list(METHODS)}")
    if not (target_kl > 0 and math.isfinite(target_kl)):
        raise SteerhealError(f"calibrate: target_kl={target_kl} must be a positive number of nats")
    if not 0 < tol < 1:
        raise SteerhealError(f"calibrate: tol={tol} must be in (0, 1) (a relative tolerance)")
    if sign not in (1, -1):
        raise SteerhealError(f"calibrate: sign={sign}; use +1 (add the concept) or -1 (suppress it)")
    if n_tokens < 1:
        raise SteerhealError(f"calibrate: n_tokens={n_tokens} must be at least 1")
    probe = build_probe(model, tok, prompts, n_tokens, batch_size)
    norm = dist.broadcast_object(residual_norm(model, tok, prompts, layers, batch_size))  # one start for all ranks

    def evaluate(c: float) -> float:
        return statistic(kl_values(model, probe, steer, sign * c), stat)

    found = search(evaluate, target_kl, START_FRACTION * norm, tol, method)
    degenerate = None
    if liveness_samples > 0:
        live_prompts = [prompts[i % len(prompts)] for i in range(liveness_samples)]
        with steer(sign * found.c):  # steering as a context: `steer` is any function of the strength
            completions = sampler().sample(
                model, tok, live_prompts, seed, max_new_tokens=liveness_tokens, batch_size=batch_size
            )
        degenerate = sum(is_degenerate(c) for c in completions) / len(completions)
    record = {
        "c": found.c,
        "coeff": sign * found.c,
        "value": found.value,
        "target_kl": target_kl,
        "stat": stat,
        "n_tokens": n_tokens,
        "tol": tol,
        "sign": sign,
        "method": method,
        "n_prompts": len(prompts),
        "n_scored_tokens": probe.n_scored,
        "residual_norm": norm,
        "history": [[c, v] for c, v in found.history],
        "n_evals": found.n_evals,
        "liveness": {"samples": liveness_samples, "tokens": liveness_tokens, "degenerate_fraction": degenerate},
    }
    logger.info(
        f"calibrated c*={found.c:.4g} ({stat} KL {found.value:.4g} for target {target_kl}) in {found.n_evals} "
        f"evaluations; {degenerate if degenerate is not None else 'unmeasured'} of sampled steered "
        "continuations degenerate"
    )
    return Dose(sign * found.c, record)


def calibrate_dose(
    vector: Vector,
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    config: DoseConfig,
    round: int = 0,
    seed: int = 0,
    batch_size: int = 16,
) -> Vector:
    """`vector.coeff` = round `round`'s iso-KL dose under `config` (its target, statistic, probe length,
    tolerance and liveness check): the loop and `steerheal calibrate` both dose through here."""
    return vector.calibrate(
        model,
        tok,
        prompts,
        config.target(round),
        config.stat,
        config.n_tokens,
        config.tol,
        liveness_samples=config.liveness_samples,
        seed=seed,
        batch_size=batch_size,
    )
