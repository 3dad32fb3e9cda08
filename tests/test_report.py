"""The run report: every section renders from a finished tiny run's events, the verdict's logic on constructed
metrics, the frontier section on a fixture event, the page's size and determinism."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import pytest

from steerheal.loop import report
from steerheal.loop.report import page, verdict
from steerheal.loop.report.events import open_view
from steerheal.loop.report.figures import Panel, Series, small_multiples
from steerheal.loop.report.markup import esc
from steerheal.loop.report.timing import round_stages
from steerheal.loop.rounds import run
from steerheal.loop.runconfig import preset
from steerheal.loop.rundir import open_existing

PNG = b"\x89PNG\r\n\x1a\n"
# the frontier event as assumed until the frontier issue writes it: per variant, points {dose, x = KL p95,
# trait, judges}, and a dominance statement
FRONTIER = {
    "event": "frontier",
    "round": 1,
    "frontier": {
        "variants": {
            "steering": [
                {"alpha": a, "x": x, "trait": t, "bits_per_byte": b, "relevance": r}
                for a, x, t, b, r in [
                    (0.25, 0.05, 0.1, 1.10, 0.90),
                    (0.5, 0.2, 0.4, 1.15, 0.88),
                    (1.0, 0.8, 0.9, 1.3, 0.8),
                ]
            ],
            "student": [
                {"g": g, "x": x, "trait": t, "bits_per_byte": b, "relevance": r}
                for g, x, t, b, r in [(0.5, 0.1, 0.4, 1.1, 0.9), (1.0, 0.4, 0.9, 1.12, 0.89), (2.0, 3.0, 1.5, 1.6, 0.7)]
            ],
        },
        "dominance": "the student lies above steering for KL p95 in [0.1, 0.4]; above 0.8 only the student reaches",
    },
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished fast-dev-run (tiny llama, 2 rounds) and its report."""
    tmp = tmp_path_factory.mktemp("report")
    config = dataclasses.replace(preset("fast-dev-run"), runs_dir=tmp, name="tiny", model="tiny:llama")
    result = run(config)
    assert result.rounds == [0, 1]
    return result.root, report.build(result.root)


def test_every_section_renders_from_a_finished_tiny_run(finished):
    root, paths = finished
    _, view = open_view(root)
    parts = {p.key: p for p in page.render_parts(view)}
    assert list(parts) == ["verdict", "trajectory", "samples", "metrics", "timing"], "no frontier event: no section"
    html = paths["html"].read_text()
    for key in parts:
        assert f"<section id='{key}'>" in html
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org", ""), "offline, no script"
    assert len(html.encode()) < 300_000, "inline SVG figures, no plotly bundle (the plotly page was 4.8 MB)"
    for question in ("Did the trait move?", "Did coherence hold?", "Is the student better than steering"):
        assert question in html
    md = paths["md"].read_text()
    assert "**Did the trait move?**" in md and "max_rounds" in md and "| round |" in md
    for name in ("trajectory.png", "timing.png"):
        assert paths[name].read_bytes().startswith(PNG)
    assert paths["png"] == paths["trajectory.png"]
    # every metric of every round is in the table, grouped and folded
    assert html.count("<details><summary>") >= 8 and "kl_tail_p95" in html
    # samples: base, steered and student of the same prompt side by side
    sample = view.rounds[-1]["samples"][0]
    assert html.count("class='gen base'") == len(view.rounds[-1]["samples"]) and esc(sample["prompt"]) in html
    assert "\\x" in html or all(ord(c) >= 32 for c in sample["student"]), "control characters shown, not dropped"
    # time per stage from the events of each round
    assert all(stage in parts["timing"].markdown for stage in ("extract", "calibrate", "pairs", "heal", "verify"))
    # a round logged before the loop timed its stages: the times come from its events' timestamps
    from steerheal.loop.report.timing import round_stages

    older = [e for e in view.round_log[0] if e.get("event") != "stage_times"]
    assert [name for name, _ in round_stages(older)][:1] == ["vector, dose, pairs"]
    before = {name: paths[name].read_bytes() for name in ("md", "html", "trajectory.png")}
    again = report.build(root)
    assert {name: again[name].read_bytes() for name in before} == before, "deterministic from events.jsonl"


def test_frontier_section_on_a_fixture_event(finished, tmp_path):
    root, _ = finished
    copied = tmp_path / "with-frontier"
    shutil.copytree(root, copied)
    open_existing(copied).log(copy.deepcopy(FRONTIER))
    paths = report.build(copied)
    html = paths["html"].read_text()
    assert "<section id='frontier'>" in html and html.index("id='frontier'") < html.index("id='trajectory'")
    assert FRONTIER["frontier"]["dominance"] in html and paths["frontier.png"].read_bytes().startswith(PNG)
    assert "judge bits per byte" in html and "relevance vs KL p95" in html
    # the verdict reads the matched points: the student's g=0.5 and g=1 lie inside steering's KL range
    assert "2 of 2 student points above steering" in html
    _, view = open_view(copied)
    assert [p.key for p in page.render_parts(view)][:2] == ["verdict", "frontier"]
    md = paths["md"].read_text()
    head = next(line for line in md.splitlines() if line.startswith("|  |") and line.endswith("| total |"))
    row = next(line for line in md.splitlines() if line.startswith("| frontier |"))
    assert row.count("|") == head.count("|"), "the frontier's row has a cell under every stage"
    assert row.split("|")[-2].strip().endswith(" s"), "the frontier's time, from the event before it, as its total"


def _metrics(**over):
    m = {
        "trait": {"base": -7.0, "steered": 1.7, "student": 0.5},
        "retain": 0.86,
        "coherence": {"kl_tail_p95": 0.36, "distinct_2": 0.32, "ppl_under_base": 4.6},
        "coherence_base": {"distinct_2": 0.37},
        "direction": {"cos_to_round0_mean": 0.993, "noise_ceiling_mean": 0.999},
        "internalisation": {"cos_mean": 0.75},
    }
    m.update(over)
    return m


LIMITS = {"max_kl_tail": 3.0, "min_distinct_2": 0.2, "min_grammar_ok": 0.9}


def test_verdict_on_constructed_metrics():
    assert verdict.trait_check(_metrics()).status == "yes"
    assert verdict.trait_check(_metrics(retain=0.3)).status == "partly"
    assert verdict.trait_check(_metrics(retain=-0.2)).status == "no"
    undefined = verdict.trait_check(_metrics(retain=None))
    assert undefined.status == "unknown" and "steering itself did not move" in undefined.answer
    truth = {v: {"mood_rate": r, "grammar_ok": 0.95} for v, r in (("base", 0.05), ("steered", 0.7), ("student", 0.1))}
    on_toyworld = verdict.trait_check(_metrics(truth=truth, retain_mood=0.08))
    assert on_toyworld.status == "no" and "exact mood rate" in on_toyworld.answer, "the truth decides on toyworld"
    judged = verdict.trait_check(_metrics(judges={"vader": {"base": 0.0, "steered": 0.5, "student": 0.4}}))
    assert ("judge vader", "base 0 → steered 0.5, student 0.4") in judged.numbers
    # a frontier of the same round: its judge (not steerheal's) decides, the projection stays beside it
    frontier = {"round": 2, "summary": {"trait": "vader.compound", "retain_at_c_star": 0.3}}
    by_judge = verdict.trait_check(_metrics(round=2, retain=1.03), frontier)
    assert by_judge.status == "partly" and "keeps 30% of steering's shift (vader.compound" in by_judge.answer
    assert "the projection says 1.03" in by_judge.answer and ("retain (projection)", "1.03") in by_judge.numbers
    assert verdict.trait_check(_metrics(round=3, retain=1.03), frontier).status == "yes", "another round's frontier"
    assert "projection" in verdict.trait_check(_metrics(round=2), {"round": 2, "summary": {}}).answer

    assert verdict.coherence_check(_metrics(), LIMITS).status == "yes"
    kl = verdict.coherence_check(_metrics(coherence={"kl_tail_p95": 3.5, "distinct_2": 0.1}), LIMITS)
    assert kl.status == "no" and "KL p95 3.5 > 3" in kl.answer and "distinct-2 0.1 < 0.2" in kl.answer
    truth["student"]["grammar_ok"] = 0.5
    assert "grammar_ok 0.5 < 0.9" in verdict.coherence_check(_metrics(truth=truth), LIMITS).answer
    none = verdict.coherence_check(_metrics(coherence={"kl_tail_p95": None, "distinct_2": 0.3}), LIMITS)
    assert none.status == "unknown"

    assert verdict.direction_check(_metrics()).status == "partly"
    assert (
        verdict.direction_check(_metrics(direction={"cos_to_round0_mean": 1.0, "noise_ceiling_mean": 0.99})).status
        == "yes"
    )
    assert (
        verdict.direction_check(_metrics(direction={"cos_to_round0_mean": 0.5, "noise_ceiling_mean": 0.99})).status
        == "no"
    )


def test_frontier_verdict_matches_in_log_kl():
    frontier = copy.deepcopy(FRONTIER["frontier"])
    assert verdict.frontier_check(None, _metrics()).status == "unknown"
    check = verdict.frontier_check(frontier, _metrics())
    assert check.status == "yes", check
    steering = frontier["variants"]["steering"]
    # halfway in log(KL) between 0.05 and 0.2 is 0.1: the trait halfway between 0.1 and 0.4
    assert verdict.interpolate_log(steering, 0.1) == pytest.approx(0.25)
    frontier["variants"]["student"][1]["trait"] = 0.5  # behind steering's 0.75 at KL 0.4
    assert verdict.frontier_check(frontier, _metrics()).status == "partly"
    # a concept whose trait falls as steering rises: lower is ahead
    falling = copy.deepcopy(FRONTIER["frontier"])
    for points in falling["variants"].values():
        for p in points:
            p["trait"] = -p["trait"]
    assert verdict.frontier_check(falling, _metrics()).status == "yes"
    apart = {"steering": [{"x": 0.01, "trait": 0.1}, {"x": 0.02, "trait": 0.2}], "student": [{"x": 1.0, "trait": 1}]}
    far = verdict.frontier_check(apart, _metrics())
    assert far.status == "unknown" and "do not overlap" in far.answer, "no dominance claimed without overlap"


def test_panels_y_range_holds_every_series():
    """The old charts cut the base's trait (-7) off; each panel's y-range now holds all of its series."""
    panel = Panel(
        "trait", [Series("base", [0, 1], [-7.0, -7.0]), Series("student", [0, 1], [0.1, 1.7])], [("max", 30.0)]
    )
    fig = small_multiples([panel])
    lo, hi = fig.axes[0].get_ylim()
    assert lo < -7.0 and hi > 1.7 and hi < 30.0, "a far threshold is written in the corner, not stretching the axis"


def test_stage_times_merge_a_missing_event_into_the_next_stage():
    t = "2026-01-01T00:00:{:02d}+00:00"
    events = [
        {"event": "round_start", "time": t.format(0)},
        {"event": "pairs", "time": t.format(10)},
        {"event": "heal_step", "time": t.format(15)},
        {"event": "heal_step", "time": t.format(30)},
        {"event": "round_end", "time": t.format(41)},
    ]
    assert round_stages(events) == [
        ("vector, dose, pairs", 10.0),
        ("verify reference + heal", 20.0),
        ("fold, verify, save", 11.0),
    ]
