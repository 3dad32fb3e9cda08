"""The per-round trajectory: small multiples, one quantity a panel, and the compact per-round table."""

from __future__ import annotations

from typing import Any

from steerheal.loop.report.events import RunView
from steerheal.loop.report.figures import COLORS, Panel, Series, render, small_multiples
from steerheal.loop.report.markup import Part, md_table
from steerheal.loop.report.verdict import fmt


def _get(metrics: dict[str, Any], path: str) -> Any:
    value: Any = metrics
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _trio(run: RunView, title: str, path: str, lines: list[tuple[str, float]] | None = None) -> Panel:
    """A panel of base / steered / student for `path` (`trait`, or `truth.{}.mood_rate` with `{}` for the variant)."""
    rounds = [e["round"] for e in run.rounds]
    series = []
    for variant in ("base", "steered", "student"):
        key = path.format(variant) if "{}" in path else f"{path}.{variant}"
        series.append(Series(variant, rounds, [_get(e["metrics"], key) for e in run.rounds], COLORS[variant]))
    return Panel(title, series, lines or [])


def _series(run: RunView, label: str, path: str, color: str | None = None, dashed: bool = False) -> Series:
    rounds = [e["round"] for e in run.rounds]
    return Series(label, rounds, [_get(e["metrics"], path) for e in run.rounds], color, dashed)


def panels(run: RunView) -> list[Panel]:
    m = run.last
    out = [_trio(run, "trait (teacher projection)", "trait")]
    if "truth" in m:
        out.append(_trio(run, "mood rate (truth)", "truth.{}.mood_rate"))
    retain = [_series(run, "retain (projection)", "retain")]
    if "retain_mood" in m:
        retain.append(_series(run, "retain (mood)", "retain_mood"))
    out.append(Panel("retain: student's share of steering's shift", retain, [("1", 1.0), ("0", 0.0)]))
    kl_max = run.threshold("max_kl_tail")
    kl = [_series(run, "student", "coherence.kl_tail_p95", COLORS["student"])]
    out.append(Panel("KL(student‖base) p95", kl, [(f"stop max {fmt(kl_max)}", kl_max)] if kl_max is not None else []))
    d2 = [
        _series(run, variant, f"{source}.distinct_2", COLORS[variant])
        for variant, source in (("base", "coherence_base"), ("steered", "coherence_steered"), ("student", "coherence"))
    ]
    d2_min = run.threshold("min_distinct_2")
    out.append(Panel("distinct-2", d2, [(f"floor {fmt(d2_min)}", d2_min)] if d2_min is not None else []))
    if "truth" in m:
        g_min = run.threshold("min_grammar_ok")
        out.append(_trio(run, "grammar_ok (truth)", "truth.{}.grammar_ok", [(f"floor {fmt(g_min)}", g_min)]))
    direction = [
        _series(run, "cos(v, v0)", "direction.cos_to_round0_mean"),
        _series(run, "noise ceiling", "direction.noise_ceiling_mean", dashed=True),
        _series(run, "internalisation cos", "internalisation.cos_mean"),
    ]
    out.append(Panel("direction", direction))
    out.append(_trio(run, "off-target concept", "off_target"))
    if "readout" in m:
        readout = [
            _series(run, "AUROC base", "readout.auroc_base_mean", COLORS["base"]),
            _series(run, "AUROC student", "readout.auroc_student_mean", COLORS["student"]),
            _series(run, "cos to base readout", "readout.cos_mean"),
        ]
        out.append(Panel("readout survival", readout))
    return out


COMPACT = (
    ("c*", "dose.c"),
    ("α", "dose.alpha"),
    ("trait base", "trait.base"),
    ("trait steered", "trait.steered"),
    ("trait student", "trait.student"),
    ("retain", "retain"),
    ("mood student", "truth.student.mood_rate"),
    ("retain (mood)", "retain_mood"),
    ("grammar student", "truth.student.grammar_ok"),
    ("KL p95", "coherence.kl_tail_p95"),
    ("distinct-2", "coherence.distinct_2"),
    ("cos(v, v0)", "direction.cos_to_round0_mean"),
    ("ceiling", "direction.noise_ceiling_mean"),
)


def compact_rows(run: RunView) -> tuple[list[str], list[list[str]]]:
    """The per-round key numbers (columns without any value, such as the mood off toyworld, left out)."""
    used = [(name, path) for name, path in COMPACT if any(_get(e["metrics"], path) is not None for e in run.rounds)]
    rows = [
        [str(e["round"])] + [fmt(_get(e["metrics"], path)) for _, path in used] + [e.get("stop") or ""]
        for e in run.rounds
    ]
    return ["round"] + [name for name, _ in used] + ["stop"], rows


def trajectory_section(run: RunView) -> Part:
    svg, png = render(small_multiples(panels(run)))
    head, rows = compact_rows(run)
    md = md_table(head, rows) + "\n\n(figure: trajectory.png)\n"
    return Part("trajectory", "Per round", svg, md, {"trajectory.png": png})
