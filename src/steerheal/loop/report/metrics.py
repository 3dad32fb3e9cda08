"""Every metric of every round, one row per metric and one column per round, grouped by the metric's top-level
key and folded (<details>). Nothing is listed by hand: a metric a later feature adds appears in its group."""

from __future__ import annotations

from typing import Any

from steerheal.loop.report.events import RunView
from steerheal.loop.report.markup import Part, html_table
from steerheal.loop.report.verdict import fmt

ORDER = (
    "trait",
    "retain",
    "truth",
    "retain_mood",
    "judges",
    "coherence",
    "coherence_base",
    "coherence_steered",
    "off_target",
    "direction",
    "internalisation",
    "readout",
    "dose",
    "heal",
)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf}; a list of numbers or of lists is kept as one compact cell."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def cell(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    return fmt(value, 4)


def groups(run: RunView) -> dict[str, dict[str, list[Any]]]:
    """{group: {metric: [value per round]}} in ORDER, then the other groups by name."""
    flat = [flatten(e["metrics"]) for e in run.rounds]
    names: dict[str, dict[str, list[Any]]] = {}
    for metrics in flat:
        for key in metrics:
            group = key.split(".", 1)[0]
            names.setdefault(group, {}).setdefault(key, [])
    for group in names.values():
        for key in group:
            group[key] = [metrics.get(key) for metrics in flat]
    ordered = [g for g in ORDER if g in names] + sorted(set(names) - set(ORDER))
    return {g: names[g] for g in ordered}


def metrics_section(run: RunView) -> Part:
    head = ["metric"] + [f"round {e['round']}" for e in run.rounds]
    parts = []
    for group, rows in groups(run).items():
        table = html_table(head, [[key] + [cell(v) for v in values] for key, values in rows.items()], "metrics")
        parts.append(f"<details><summary>{group} ({len(rows)})</summary>{table}</details>")
    stops = [f"round {e['round']}: {e['stop']}" for e in run.rounds if e.get("stop")]
    note = f"<p class='note'>Stop decisions: {'; '.join(stops) or 'none yet'}.</p>"
    return Part("metrics", "Every metric, by group", note + "".join(parts))
