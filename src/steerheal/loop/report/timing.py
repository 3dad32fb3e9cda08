"""Time per stage, from the timestamps of the events a round logs (from the attempt that completed it):

    round_start → pairs        vector, dose and pairs (re-extract, calibrate, dose walk, sample the pairs)
    pairs → heal_start         verify reference (round 0: the base's and steered generations)
    heal_start → last heal_step   heal
    last heal_step → round_end    fold, verify, save

Rounds that log a `stage_times` event (every round since the loop timed its stages) are read from it instead.
A missing event merges its stage into the next one (named "a + b"). Model loading is not logged by an event,
so it is not shown; the frontier, when logged, is timed from the event before it.
"""

from __future__ import annotations

import datetime
from typing import Any

from steerheal.loop.report.events import RunView
from steerheal.loop.report.figures import CYCLE, pyplot, render
from steerheal.loop.report.markup import Part, html_table, md_table

STAGES = (
    ("round_start", None),
    ("pairs", "vector, dose, pairs"),
    ("heal_start", "verify reference"),
    ("heal_step", "heal"),
    ("round_end", "fold, verify, save"),
)


def seconds(a: str, b: str) -> float:
    return (datetime.datetime.fromisoformat(b) - datetime.datetime.fromisoformat(a)).total_seconds()


def round_stages(events: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """[(stage, seconds)] of one round's events: the round's own `stage_times` event when it logged one
    (extract, calibrate, pairs, reference, heal, verify), else from the events' timestamps (the heal ends at
    its last heal_step)."""
    for event in events:
        if event.get("event") == "stage_times":
            return [(name, float(s)) for name, s in event["seconds"].items()]
    when: dict[str, str] = {}
    for event in events:
        kind = event.get("event")
        if kind == "heal_step" or (kind in dict(STAGES) and kind not in when):
            when[kind] = event["time"]
    out, previous, pending = [], None, []
    for kind, label in STAGES:
        if kind not in when:
            if label is not None:
                pending.append(label)
            continue
        if previous is not None:
            out.append((" + ".join([*pending, label or kind]), seconds(previous, when[kind])))
        previous, pending = when[kind], []
    return out


def stage_table(run: RunView) -> tuple[list[str], list[list[Any]]]:
    per_round = {e["round"]: round_stages(run.round_log[e["round"]]) for e in run.rounds}
    labels: list[str] = []
    for stages in per_round.values():
        labels += [name for name, _ in stages if name not in labels]
    rows = []
    for k, stages in per_round.items():
        found = dict(stages)
        total = sum(found.values())
        rows.append([f"round {k}"] + [found.get(name) for name in labels] + [total])
    return ["", *labels, "total"], rows


def frontier_seconds(run: RunView) -> float | None:
    for i, event in enumerate(run.events):
        if event.get("event") == "frontier" and i > 0:
            return seconds(run.events[i - 1]["time"], event["time"])
    return None


def _figure(labels: list[str], rows: list[list[Any]]) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.0))
    names = [row[0] for row in rows][::-1]
    left = [0.0] * len(rows)
    for j, label in enumerate(labels):
        widths = [(row[j + 1] or 0.0) for row in rows][::-1]
        ax.barh(names, widths, left=left, color=CYCLE[j % len(CYCLE)], label=label, height=0.6)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("seconds")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(rows) < 3 else -0.2), ncol=len(labels))
    fig.tight_layout()
    return fig


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def timing_section(run: RunView) -> Part:
    head, rows = stage_table(run)
    frontier = frontier_seconds(run)
    if frontier is not None:
        rows.append(["frontier", *[None] * (len(head) - 2), frontier])
    text_rows = [[row[0], *[_s(v) for v in row[1:]]] for row in rows]
    svg, png = render(_figure(head[1:-1], [r for r in rows if r[0] != "frontier"]))
    attempts = sorted({e.get("attempt") for e in run.rounds})
    note = (
        f"<p class='note'>Wall time between logged events (rounds from attempt(s) {attempts}); model loading is "
        "not logged and not shown.</p>"
    )
    body = note + html_table(head, text_rows, "timing") + f"<div style='max-width:860px'>{svg}</div>"
    return Part("timing", "Time per stage", body, md_table(head, text_rows) + "\n", {"timing.png": png})
