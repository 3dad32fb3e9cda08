"""The verdict: the three questions a run answers, and how the direction held, from one round's metrics.

1. Did the trait move? The student's share of steering's shift (retain). On toyworld the exact mood rate is
   the ground truth, so its retain decides; elsewhere a judge steerheal did not write decides when the run has a
   frontier of the same round (its trait judge, VADER by default: the student at g = 1 against steering at
   α = 1), and the teacher projection (steerheal's own instrument) only without one; the projection is always
   shown. `yes` from RETAIN_YES, `partly` above RETAIN_PARTLY, `unknown` when steering itself did not move the
   trait (retain undefined).
2. Did coherence hold? The stop rule's coherence floor, absolute (grammar_ok on toyworld, distinct-2, KL tail).
3. Is the student better than steering at the same KL? Only the frontier answers it: steering's trait is
   interpolated in log-KL at each student point inside steering's KL range. Without a frontier: `unknown`.
4. Did the direction hold? cos(v, v0) against the split-half noise ceiling (a conservative, low ceiling):
   `yes` within it, `partly` beyond it with cos ≥ DIRECTION_KEPT, else `no`; both also as angles.

Each answer is a `Check`: a status (yes | partly | no | unknown), one sentence, and its numbers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

RETAIN_YES = 0.5  # the student keeps at least half of steering's shift
RETAIN_PARTLY = 0.1  # it moved the right way, by less than half
DIRECTION_KEPT = 0.9  # cos(v, v0) below the noise ceiling but above this: the direction moved, and was kept


@dataclass
class Check:
    question: str
    status: str
    answer: str
    numbers: list[tuple[str, str]] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for people: `undefined` for None, 3 significant figures by default."""
    if value is None:
        return "undefined"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "undefined"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def _shift(trio: dict[str, Any]) -> str:
    return f"base {fmt(trio.get('base'))} → steered {fmt(trio.get('steered'))}, student {fmt(trio.get('student'))}"


def _retain_status(retain: float | None) -> str:
    if retain is None:
        return "unknown"
    return "yes" if retain >= RETAIN_YES else "partly" if retain >= RETAIN_PARTLY else "no"


def judged_retain(frontier: dict[str, Any] | None, metrics: dict[str, Any]) -> tuple[str, float | None] | None:
    """(trait judge, retain) from the frontier's summary when it measured this round's student, else None."""
    if frontier is None or "retain_at_c_star" not in (frontier.get("summary") or {}):
        return None
    if frontier.get("round", metrics.get("round")) != metrics.get("round"):
        return None  # the frontier judged another round's student
    summary = frontier["summary"]
    return str(summary.get("trait", "the trait judge")), summary["retain_at_c_star"]


def trait_check(metrics: dict[str, Any], frontier: dict[str, Any] | None = None) -> Check:
    trait, retain = metrics["trait"], metrics.get("retain")
    numbers = [("trait (projection)", _shift(trait)), ("retain (projection)", fmt(retain))]
    truth = metrics.get("truth")
    decisive, source = retain, "the teacher projection"
    judged = judged_retain(frontier, metrics)
    if judged is not None and truth is None:
        judge, value = judged
        numbers.append((f"retain ({judge}, frontier: g = 1 against α = 1)", fmt(value)))
        decisive, source = value, f"{judge}, a judge steerheal did not write; the projection says {fmt(retain)}"
    if truth is not None:
        mood = {k: truth[k]["mood_rate"] for k in ("base", "steered", "student")}
        numbers.insert(0, ("mood rate (truth)", _shift(mood)))
        numbers.insert(1, ("retain (mood)", fmt(metrics.get("retain_mood"), 2)))
        decisive, source = metrics.get("retain_mood"), "the exact mood rate"
    for name, judge in sorted((metrics.get("judges") or {}).items()):
        if isinstance(judge, dict) and {"base", "steered", "student"} <= set(judge):
            numbers.append((f"judge {name}", _shift(judge)))
    status = _retain_status(decisive)
    if decisive is None:
        answer = f"undefined by {source}: steering itself did not move the trait (retain undefined)"
    else:
        verb = {"yes": "yes", "partly": "partly", "no": "no"}[status]
        answer = f"{verb}: the student keeps {decisive:.0%} of steering's shift ({source})"
    return Check("Did the trait move?", status, answer, numbers)


def coherence_check(metrics: dict[str, Any], thresholds: dict[str, float | None]) -> Check:
    """The coherence floor of the stop rules; `thresholds` holds max_kl_tail, min_distinct_2, min_grammar_ok."""
    coherence, base = metrics["coherence"], metrics.get("coherence_base") or {}
    broken, numbers = [], []
    kl, kl_max = coherence.get("kl_tail_p95"), thresholds.get("max_kl_tail")
    numbers.append(("KL(student‖base) p95", f"{fmt(kl)} (stop rule's max {fmt(kl_max)})"))
    if kl is not None and kl_max is not None and kl > kl_max:
        broken.append(f"KL p95 {fmt(kl)} > {fmt(kl_max)}")
    d2, d2_min = coherence.get("distinct_2"), thresholds.get("min_distinct_2")
    numbers.append(("distinct-2", f"{fmt(d2)} (base {fmt(base.get('distinct_2'))}; floor {fmt(d2_min)})"))
    if d2 is not None and d2_min is not None and d2 < d2_min:
        broken.append(f"distinct-2 {fmt(d2)} < {fmt(d2_min)}")
    truth = metrics.get("truth")
    if truth is not None:
        grammar, g_min = truth["student"].get("grammar_ok"), thresholds.get("min_grammar_ok")
        numbers.append(
            ("grammar_ok", f"{fmt(grammar)} (base {fmt(truth['base'].get('grammar_ok'))}; floor {fmt(g_min)})")
        )
        if grammar is not None and g_min is not None and grammar < g_min:
            broken.append(f"grammar_ok {fmt(grammar)} < {fmt(g_min)}")
    ppl = coherence.get("ppl_under_base")
    numbers.append(("perplexity under base", fmt(ppl)))
    if broken:
        return Check("Did coherence hold?", "no", "no: " + "; ".join(broken), numbers)
    if kl is None or d2 is None:
        return Check("Did coherence hold?", "unknown", "unknown: the KL tail or distinct-2 is undefined", numbers)
    return Check("Did coherence hold?", "yes", "yes: every value is inside the stop rule's coherence floor", numbers)


def _increasing(points: list[dict[str, Any]]) -> bool:
    """Whether the trait rises with steering's KL (the concept's direction, read from steering's own curve)."""
    return points[-1]["trait"] >= points[0]["trait"]


def interpolate_log(points: list[dict[str, Any]], x: float) -> float:
    """Steering's trait at KL x, linear in log(KL) between its two neighbouring points (x inside the range)."""
    for a, b in itertools.pairwise(points):
        if a["x"] <= x <= b["x"]:
            if b["x"] == a["x"]:
                return float(a["trait"])
            t = (math.log(x) - math.log(a["x"])) / (math.log(b["x"]) - math.log(a["x"]))
            return float(a["trait"] + t * (b["trait"] - a["trait"]))
    raise ValueError(f"KL {x} outside steering's range")


def matched(frontier: dict[str, Any]) -> list[dict[str, float]]:
    """Each student point inside steering's KL range: its trait, steering's at the same KL, and the margin
    (positive where the student carries more trait in the concept's direction)."""
    variants = frontier.get("variants", frontier)
    steering = sorted((p for p in variants.get("steering", []) if _usable(p)), key=lambda p: p["x"])
    student = sorted((p for p in variants.get("student", []) if _usable(p)), key=lambda p: p["x"])
    if len(steering) < 2:
        return []
    sign = 1.0 if _increasing(steering) else -1.0
    out = []
    for point in student:
        if steering[0]["x"] <= point["x"] <= steering[-1]["x"]:
            at = interpolate_log(steering, point["x"])
            out.append(
                {"x": point["x"], "student": point["trait"], "steering": at, "margin": sign * (point["trait"] - at)}
            )
    return out


def _usable(point: dict[str, Any]) -> bool:
    x, trait = point.get("x"), point.get("trait")
    return isinstance(x, int | float) and isinstance(trait, int | float) and x > 0 and math.isfinite(trait)


def frontier_check(frontier: dict[str, Any] | None, metrics: dict[str, Any]) -> Check:
    question = "Is the student better than steering at the same KL?"
    if frontier is None:
        return Check(
            question,
            "unknown",
            "not measured: this run has no frontier event (steering at α·c* against the student's dial, matched "
            f"in KL); at the one dose verified the student keeps {fmt(metrics.get('retain'), 2)} of steering's shift",
        )
    pairs = matched(frontier)
    numbers = [("dominance (as computed with the frontier)", str(frontier.get("dominance", "not stated")))]
    if not pairs:
        variants = frontier.get("variants", frontier)
        ranges = {name: [p["x"] for p in variants.get(name, []) if _usable(p)] for name in ("steering", "student")}
        spans = ", ".join(f"{k} {fmt(min(v))}–{fmt(max(v))}" if v else f"{k} none" for k, v in ranges.items())
        return Check(question, "unknown", f"cannot say: the KL ranges do not overlap ({spans})", numbers)
    ahead = sum(p["margin"] > 0 for p in pairs)
    numbers.append(("student points inside steering's KL range", f"{ahead} of {len(pairs)} ahead of steering"))
    best = max(pairs, key=lambda p: p["margin"])
    numbers.append(("largest margin", f"{fmt(best['margin'])} at KL p95 {fmt(best['x'])}"))
    status = "yes" if ahead == len(pairs) else "no" if ahead == 0 else "partly"
    words = {"yes": "yes, at every matched KL", "no": "no, at no matched KL", "partly": "at some KL only"}
    return Check(question, status, f"{words[status]}: {ahead} of {len(pairs)} student points above steering", numbers)


def angle(cos: float) -> float:
    """The angle in degrees of a cosine (clipped to [-1, 1])."""
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def direction_check(metrics: dict[str, Any]) -> Check:
    direction = metrics["direction"]
    cos, ceiling = direction.get("cos_to_round0_mean"), direction.get("noise_ceiling_mean")
    numbers = [("cos(v, v0)", f"{fmt(cos)} (noise ceiling {fmt(ceiling)})")]
    inside = (metrics.get("internalisation") or {}).get("cos_mean")
    numbers.append(("internalisation cos", fmt(inside)))
    question = "Did the direction hold?"
    if cos is None or ceiling is None:
        return Check(question, "unknown", "unknown: cos(v, v0) is undefined", numbers)
    moved, noise = angle(cos), angle(ceiling)
    numbers.insert(1, ("angle to v0", f"{moved:.1f}° (re-reading noise {noise:.1f}°)"))
    if cos >= ceiling:
        return Check(question, "yes", "yes: cos(v, v0) is within re-reading noise", numbers)
    if cos >= DIRECTION_KEPT:
        answer = f"kept, beyond noise: the direction moved {moved:.1f}°, re-reading alone {noise:.1f}°"
        return Check(question, "partly", answer, numbers)
    return Check(question, "no", f"it wandered: {moved:.1f}° from v0 (re-reading noise {noise:.1f}°)", numbers)


def checks(
    metrics: dict[str, Any], thresholds: dict[str, float | None], frontier: dict[str, Any] | None
) -> list[Check]:
    """The verdict on one round's metrics (the last one's, in the report)."""
    return [
        trait_check(metrics, frontier),
        coherence_check(metrics, thresholds),
        frontier_check(frontier, metrics),
        direction_check(metrics),
    ]
