"""The first section: the verdict on the last complete round, with its key numbers."""

from __future__ import annotations

from steerheal.loop.report.events import RunView
from steerheal.loop.report.markup import Part, esc
from steerheal.loop.report.verdict import Check, checks, fmt

THRESHOLDS = ("max_kl_tail", "min_distinct_2", "min_grammar_ok")
MARK = {"yes": "✓", "partly": "~", "no": "✗", "unknown": "?"}


def verdict_checks(run: RunView) -> list[Check]:
    metrics = {**run.last, "round": run.rounds[-1]["round"]}  # so a frontier of another round is not read as this one
    return checks(metrics, {name: run.threshold(name) for name in THRESHOLDS}, run.frontier)


def _stopped(run: RunView) -> str:
    return run.stop["reason"] if run.stop else "not yet (the run is unfinished)"


def headline(run: RunView) -> list[str]:
    """One line about the run: model, concept, rounds, why it stopped."""
    k = run.rounds[-1]["round"]
    concept = next((e.get("concept") for e in run.events if e.get("event") == "run_start"), None)
    dose = run.last.get("dose", {})
    return [
        f"model {run.config.get('model')}, concept {concept or 'unrecorded'}, seed {run.config.get('seed')}",
        f"{len(run.rounds)} complete round(s); verdict on round {k} (dose c* {fmt(dose.get('c'))} × α "
        f"{fmt(dose.get('alpha'))}, {dose.get('kept')}/{dose.get('pairs')} pairs kept)",
        f"stopped: {_stopped(run)}",
    ]


def verdict_section(run: RunView) -> Part:
    found = verdict_checks(run)
    cards = []
    for check in found:
        numbers = "".join(f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in check.numbers)
        cards.append(
            f"<div class='card {check.status}'><div class='q'><span class='mark'>{MARK[check.status]}</span>"
            f"{esc(check.question)}</div><div class='a'>{esc(check.answer)}</div>"
            f"<table class='kv'>{numbers}</table></div>"
        )
    lines = "".join(f"<li>{esc(line)}</li>" for line in headline(run))
    body = f"<ul class='run'>{lines}</ul><div class='cards'>{''.join(cards)}</div>"
    md = [f"- {line}" for line in headline(run)] + [""]
    for check in found:
        md.append(f"**{check.question}** {MARK[check.status]} {check.answer}")
        md += [f"  - {name}: {value}" for name, value in check.numbers]
        md.append("")
    return Part("verdict", "Verdict", body, "\n".join(md))
