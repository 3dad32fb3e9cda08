"""What a report reads: a finished (or interrupted) run's events, as one `RunView`.

Each round counts once: only the `round_end` event of the attempt named in the round's manifest is read (and
the other events of that round from the same attempt), so a round replayed after a kill is never
double-counted. The thresholds the verdict compares with come from the run's config.json; everything measured
comes from events.jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerheal.errors import SteerhealError
from steerheal.files import read_json
from steerheal.loop.rundir import CONFIG, RunDir, open_existing


def round_events(run: RunDir) -> list[dict[str, Any]]:
    """The `round_end` event of each complete round, from the attempt that completed it."""
    done = {k: run.manifest(k)["attempt"] for k in run.complete_rounds()}
    chosen = {}
    for event in run.events():
        k = event.get("round")
        if event.get("event") == "round_end" and k in done and event["attempt"] == done[k]:
            chosen[k] = event
    missing = sorted(set(done) - set(chosen))
    if missing:
        raise SteerhealError(f"run {run.root}: rounds {missing} are complete but their round_end events are missing")
    return [chosen[k] for k in sorted(chosen)]


@dataclass
class RunView:
    """A run as the report sees it: `rounds` holds each complete round's `round_end` event in order,
    `round_log[k]` every event of round k from the attempt that completed it, `frontier` the last `frontier`
    event (or None), `config` the run's configuration as stored."""

    name: str
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    round_log: dict[int, list[dict[str, Any]]]
    events: list[dict[str, Any]]
    stop: dict[str, Any] | None
    frontier: dict[str, Any] | None = None

    @property
    def last(self) -> dict[str, Any]:
        """The last complete round's metrics."""
        return self.rounds[-1]["metrics"]

    def threshold(self, name: str) -> float | None:
        """A stop-rule threshold (`max_kl_tail`, `min_distinct_2`, `min_grammar_ok`, ...) from the config."""
        value = self.config.get("stop", {}).get(name)
        return None if value is None else float(value)


def _round_of(event: dict[str, Any]) -> int | None:
    """heal_step events name their round as the adapter's round name (`round_0`); the others as an int."""
    k = event.get("round")
    if isinstance(k, int):
        return k
    if isinstance(k, str) and k.rsplit("_", 1)[-1].isdigit():
        return int(k.rsplit("_", 1)[-1])
    return None


def view(run: RunDir) -> RunView:
    """The RunView of an opened run directory; a run without a complete round is an error naming it."""
    rounds = round_events(run)
    if not rounds:
        raise SteerhealError(f"run {run.root} has no complete round to report")
    events = run.events()
    attempts = {e["round"]: e["attempt"] for e in rounds}
    log: dict[int, list[dict[str, Any]]] = {k: [] for k in attempts}
    for event in events:
        k = _round_of(event)
        if k in attempts and event.get("attempt") == attempts[k]:
            log[k].append(event)
    frontiers = [e for e in events if e.get("event") == "frontier"]
    swept = [e for e in frontiers if any(p.get("kind") == "steering" for p in _records(_raw(e)))]
    frontiers = swept or frontiers  # a later plain dial sweep (`steerheal dial`) does not hide the frontier
    return RunView(
        name=run.root.name,
        config=read_json(run.root / CONFIG, f"run {run.root}"),
        rounds=rounds,
        round_log=log,
        events=events,
        stop=run.stop_record(),
        frontier=frontier_of(frontiers[-1]) if frontiers else None,
    )


def frontier_of(event: dict[str, Any]) -> dict[str, Any]:
    """The frontier dict of a `frontier` event (under its "frontier" key, or the event itself), in the sections'
    shape: `judges.frontier` records (one per variant: kind, value, kl_own, judges, trait_shift) become
    {"variants": {"steering": [points], "student": [points]}, "dominance": reading}."""
    frontier = _raw(event)
    records = _records(frontier)
    if not records:
        return frontier
    config = frontier.get("config", {})

    def score(record: dict[str, Any], key: str | None) -> Any:
        if not key:
            return None
        judge, name = key.split(".", 1)
        return record.get("judges", {}).get(judge, {}).get(name)

    # bits per byte under a judge model, or (toyworld) the exact grammar_ok: each gets its own, rightly labelled panel
    coherence_axis = str(config.get("coherence") or "bits_per_byte").split(".", 1)[-1]

    def point(record: dict[str, Any]) -> dict[str, Any]:
        dose = {"alpha": record["value"]} if record["kind"] == "steering" else {"g": record["value"]}
        return {
            **dose,
            "x": (record.get("kl_own") or {}).get("p95"),
            "KL p95 on the base's greedy text": (record.get("kl_greedy") or {}).get("p95"),
            "trait": record.get("trait_shift"),
            coherence_axis: score(record, config.get("coherence")),
            "relevance": score(record, config.get("relevance")),
        }

    variants = {kind: [point(r) for r in records if r.get("kind") == kind] for kind in ("steering", "student")}
    readings = [
        f"{label}: {frontier['comparisons'][view]['reading']}"
        for view, label in (("kl_own", "KL on each variant's own samples"), ("kl_greedy", "KL on the base's text"))
        if view in frontier.get("comparisons", {}) and "reading" in frontier["comparisons"][view]
    ]
    return {
        **{k: v for k, v in frontier.items() if k != "variants"},
        **({"round": event["round"]} if "round" in event else {}),
        "variants": variants,
        "dominance": "; ".join(readings) or "not stated",
        "trait_axis": f"{config.get('trait')} shift from the base",
    }


def _raw(event: dict[str, Any]) -> dict[str, Any]:
    return event["frontier"] if isinstance(event.get("frontier"), dict) else event


def _records(frontier: dict[str, Any]) -> list[dict[str, Any]]:
    variants = frontier.get("variants")
    return [r for r in variants if isinstance(r, dict) and "kind" in r] if isinstance(variants, list) else []


def open_view(directory: str | Path) -> tuple[RunDir, RunView]:
    run = open_existing(Path(directory))
    return run, view(run)
