"""The frontier section: trait (and the judges' bits per byte and relevance) against KL(·‖base), steering at
α·c* beside the student at dial g. It renders only when events.jsonl holds a `frontier` event.

The shape read (the frontier issue writes it; the dict sits under the event's "frontier" key or is the event):

    {"variants": {"steering": [{"alpha": 0.5, "x": <KL p95>, "trait": .., "bits_per_byte": .., "relevance": ..}, ..],
                  "student":  [{"g": 1.0, "x": .., "trait": .., ...}, ..]},
     "dominance": "<one sentence: where the student's curve lies above steering's>"}

`variants` may be left out (the variant lists at the top level). Any other key of a point is listed in the
table; missing judges leave their panel out.
"""

from __future__ import annotations

from typing import Any

from steerheal.loop.report.events import RunView
from steerheal.loop.report.figures import COLORS, Panel, Series, render, small_multiples
from steerheal.loop.report.markup import Part, esc, html_table, md_table
from steerheal.loop.report.verdict import fmt, matched

VARIANTS = ("steering", "student")
AXES = (
    ("trait", "trait"),
    ("bits_per_byte", "judge bits per byte (coherence; lower is better)"),
    ("grammar_ok", "grammar_ok (toyworld's exact coherence; higher is better)"),
    ("relevance", "relevance"),
)
DOSE_KEYS = (("alpha", "α"), ("g", "g"), ("dial", "g"), ("dose", ""))


def variants_of(frontier: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    variants = frontier.get("variants", frontier)
    return {name: sorted(variants.get(name, []), key=lambda p: p.get("x") or 0.0) for name in VARIANTS}


def dose_label(point: dict[str, Any]) -> str:
    for key, symbol in DOSE_KEYS:
        if key in point:
            return f"{symbol}{fmt(point[key], 2)}"
    return ""


def frontier_figure(frontier: dict[str, Any]) -> Any:
    variants = variants_of(frontier)
    panels = []
    for key, title in AXES:
        series = []
        for name in VARIANTS:
            points = [p for p in variants[name] if isinstance(p.get("x"), int | float) and p.get("x", 0) > 0]
            if any(p.get(key) is not None for p in points):
                series.append(
                    Series(
                        name,
                        [p["x"] for p in points],
                        [p.get(key) for p in points],
                        COLORS[name],
                        notes=[dose_label(p) for p in points],
                    )
                )
        if series:
            panels.append(
                Panel(f"{title} vs KL p95", series, xlabel="KL(·‖base) p95 (log)", logx=True, integer_x=False)
            )
    return small_multiples(panels, columns=3, size=(4.4, 3.0)) if panels else None


def _columns(variants: dict[str, list[dict[str, Any]]]) -> list[str]:
    keys = {k for points in variants.values() for p in points for k in p}
    first = [k for k, _ in DOSE_KEYS if k in keys] + ["x"] + [k for k, _ in AXES]
    return [k for k in first if k in keys] + sorted(keys - set(first))


def frontier_section(run: RunView) -> Part | None:
    if run.frontier is None:
        return None
    frontier = run.frontier
    variants = variants_of(frontier)
    columns = _columns(variants)
    head = ["variant"] + ["KL p95" if c == "x" else c for c in columns]
    rows = [[name] + [fmt(p.get(c)) for c in columns] for name in VARIANTS for p in variants[name]]
    pairs = matched(frontier)
    match_rows = [[fmt(p["x"]), fmt(p["student"]), fmt(p["steering"]), fmt(p["margin"])] for p in pairs]
    match_head = ["KL p95", "student trait", "steering trait (log-KL interpolated)", "margin"]
    dominance = str(frontier.get("dominance", "not stated in the event"))
    body = f"<p class='statement'>{esc(dominance)}</p>"
    pngs = {}
    figure = frontier_figure(frontier)
    if figure is not None:
        svg, png = render(figure)
        body += svg
        pngs["frontier.png"] = png
    if pairs:
        body += "<h3>Matched in KL</h3>" + html_table(match_head, match_rows)
    body += f"<details><summary>every point ({len(rows)})</summary>{html_table(head, rows)}</details>"
    md = f"{dominance}\n\n{md_table(head, rows)}\n"
    if pairs:
        md += f"\nMatched in KL:\n\n{md_table(match_head, match_rows)}\n"
    return Part("frontier", "Frontier: trait against KL, student vs steering", body, md, pngs)
