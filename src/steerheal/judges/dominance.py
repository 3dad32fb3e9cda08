"""Where does one trait curve lie above another at equal cost? Piecewise-linear, exact, and honest about range.

Each curve is a few measured points (cost x, trait y): steering at five doses, the student at five dials.
Neither is measured at the other's costs, so both are interpolated linearly in t = log x for KL (KL spans
decades and the points are roughly geometric in it) or in x itself for bounded axes (bits per byte,
relevance). Between consecutive knots of *either* curve both interpolants are linear, so their difference is
linear too: its sign on each segment, and the crossing where it changes, are exact, and the answer is a list
of intervals, each won by one curve.

Interpolation is only honest inside both curves' ranges. Where the ranges do not overlap (a student that
never moves the model as far as the gentlest steering dose), nothing is compared: the verdict is
`no_overlap` with both ranges, never a dominance extrapolated from outside the data. Points whose cost is not
finite (or not positive on a log axis) are dropped and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from steerheal.errors import SteerhealError

Point = tuple[float, float]
CURVES = ("student", "steering")


def _knots(points: Sequence[Point], log_x: bool) -> list[tuple[float, float]]:
    """(t, y) sorted by t, points at equal t averaged (one value per cost)."""
    by_t: dict[float, list[float]] = {}
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x):
            by_t.setdefault(math.log(x) if log_x else x, []).append(y)
    return sorted((t, math.fsum(ys) / len(ys)) for t, ys in by_t.items())


def interpolate(knots: Sequence[tuple[float, float]], t: float) -> float:
    """The piecewise-linear curve through `knots` at t (inside their range)."""
    if not knots[0][0] <= t <= knots[-1][0]:
        raise SteerhealError(f"interpolate: t={t} outside the curve's range [{knots[0][0]}, {knots[-1][0]}]")
    for (t0, y0), (t1, y1) in pairwise(knots):
        if t0 <= t <= t1:
            return y0 if t1 == t0 else y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    return knots[-1][1]  # a single knot


def _winner(d: float, tie: float) -> str:
    return "tie" if abs(d) <= tie else ("student" if d > 0 else "steering")


def compare_curves(
    student: Sequence[Point], steering: Sequence[Point], log_x: bool = True, tie: float = 0.0
) -> dict[str, Any]:
    """Where the student's trait (y, higher is more trait) beats steering's at equal cost x.

    Returns a JSON-ready dict: `verdict` (`student`, `steering`, `tie`, `mixed` or `no_overlap`), both
    `ranges` and the `overlap` in x units, `intervals` ([{from, to, better}], x units, merged), `points`
    (both curves and their difference at every knot inside the overlap), `dropped` (points without a usable
    cost) and `reading`, one sentence saying it. A difference within `tie` (y units) is a tie.
    """
    if tie < 0:
        raise SteerhealError(f"compare_curves: tie={tie} must be >= 0")
    knots = {"student": _knots(student, log_x), "steering": _knots(steering, log_x)}
    dropped = {
        "student": len(student) - sum(1 for _ in knots["student"]),
        "steering": len(steering) - sum(1 for _ in knots["steering"]),
    }
    x = (lambda t: math.exp(t)) if log_x else (lambda t: t)
    out: dict[str, Any] = {"axis": "log" if log_x else "linear", "dropped": dropped}
    if not knots["student"] or not knots["steering"]:
        empty = [c for c in CURVES if not knots[c]]
        out.update(verdict="no_overlap", ranges=None, overlap=None, intervals=[], points=[])
        out["reading"] = f"no comparison: the {' and '.join(empty)} curve has no point with a usable cost"
        return out
    ranges = {c: [x(knots[c][0][0]), x(knots[c][-1][0])] for c in CURVES}
    lo = max(knots["student"][0][0], knots["steering"][0][0])
    hi = min(knots["student"][-1][0], knots["steering"][-1][0])
    out["ranges"] = ranges
    if lo > hi:
        out.update(verdict="no_overlap", overlap=None, intervals=[], points=[])
        out["reading"] = (
            f"no comparison: the cost ranges do not overlap (student {_fmt(ranges['student'])}, steering "
            f"{_fmt(ranges['steering'])}); neither curve is measured at the other's costs"
        )
        return out
    grid = sorted({lo, hi, *(t for c in CURVES for t, _ in knots[c] if lo <= t <= hi)})
    diffs = [interpolate(knots["student"], t) - interpolate(knots["steering"], t) for t in grid]
    out["overlap"] = [x(lo), x(hi)]
    out["points"] = [
        {"x": x(t), "student": d + interpolate(knots["steering"], t), "steering": interpolate(knots["steering"], t)}
        | {"difference": d}
        for t, d in zip(grid, diffs, strict=True)
    ]
    intervals = _intervals(grid, diffs, tie) if len(grid) > 1 else [(grid[0], grid[0], _winner(diffs[0], tie))]
    out["intervals"] = [{"from": x(a), "to": x(b), "better": w} for a, b, w in intervals]
    winners = {w for _, _, w in intervals}
    out["verdict"] = winners.pop() if len(winners) == 1 else "mixed"
    out["reading"] = _reading(out)
    return out


def _intervals(grid: list[float], diffs: list[float], tie: float) -> list[tuple[float, float, str]]:
    """Merged (from t, to t, winner) over the grid; each segment's difference is linear, so a sign change is
    split at its exact crossing."""
    pieces: list[tuple[float, float, str]] = []
    for (t0, d0), (t1, d1) in pairwise(zip(grid, diffs, strict=True)):
        w0, w1 = _winner(d0, tie), _winner(d1, tie)
        if w0 == w1 or "tie" in (w0, w1):
            # inside the tie band at one end: the segment belongs to the end that is outside it (or is a tie)
            pieces.append((t0, t1, w1 if w0 == "tie" else w0))
        else:  # a strict sign change: the difference crosses 0 inside the segment
            cross = t0 + d0 / (d0 - d1) * (t1 - t0)
            pieces.extend([(t0, cross, w0), (cross, t1, w1)])
    merged: list[tuple[float, float, str]] = []
    for a, b, w in pieces:
        if merged and merged[-1][2] == w:
            merged[-1] = (merged[-1][0], b, w)
        else:
            merged.append((a, b, w))
    return merged


def _fmt(pair: Sequence[float]) -> str:
    return f"[{pair[0]:.3g}, {pair[1]:.3g}]"


def _reading(out: dict[str, Any]) -> str:
    overlap = _fmt(out["overlap"])
    if out["verdict"] in CURVES:
        return f"{out['verdict']} has more trait at every cost in the overlap {overlap}"
    if out["verdict"] == "tie":
        return f"the curves agree (within the tie band) over the overlap {overlap}"
    parts = [f"{i['better']} on {_fmt([i['from'], i['to']])}" for i in out["intervals"]]
    return f"mixed over the overlap {overlap}: " + "; ".join(parts)
