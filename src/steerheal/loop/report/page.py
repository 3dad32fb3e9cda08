"""The report: a list of sections, each a function from the run's events (a `RunView`) to a `Part` (or None
when it has nothing to show), written as report.html (one self-contained page: inline SVG and CSS, no
script, works offline), report.md (the same verdict and tables in text) and one PNG per figure.

A later feature adds a section by writing one function and adding it to SECTIONS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from steerheal.files import atomic_write_bytes
from steerheal.loop.report.events import RunView, open_view
from steerheal.loop.report.frontier import frontier_section
from steerheal.loop.report.markup import Part, esc
from steerheal.loop.report.metrics import metrics_section
from steerheal.loop.report.samples import samples_section
from steerheal.loop.report.summary import verdict_section
from steerheal.loop.report.timing import timing_section
from steerheal.loop.report.trajectory import trajectory_section

Section = Callable[[RunView], Part | None]
SECTIONS: list[Section] = [
    verdict_section,
    frontier_section,
    trajectory_section,
    samples_section,
    metrics_section,
    timing_section,
]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:18px 28px 40px}
h1{font-size:22px;margin:6px 0 2px}h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}
nav{font-size:13px;margin:4px 0 14px}nav a{margin-right:14px;color:#1f6fb4;text-decoration:none}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:14px 18px;margin:0 0 16px}
ul.run{margin:0 0 12px;padding-left:18px;color:#444}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(290px,1fr));gap:12px}
.card{border:1px solid #e2e5ea;border-left:6px solid #999;border-radius:6px;padding:10px 12px}
.card.yes{border-left-color:#2f9e44;background:#f3fbf4}.card.no{border-left-color:#c92a2a;background:#fdf3f3}
.card.partly{border-left-color:#e67700;background:#fff8ec}.card.unknown{border-left-color:#868e96;background:#f6f7f9}
.card .q{font-weight:600}.card .a{margin:4px 0 8px}.mark{display:inline-block;width:1.3em;font-weight:700}
.yes .mark{color:#2f9e44}.no .mark{color:#c92a2a}.partly .mark{color:#e67700}.unknown .mark{color:#868e96}
table{border-collapse:collapse;font-size:12.5px}th,td{padding:3px 8px;text-align:left;vertical-align:top}
table.kv th{font-weight:500;color:#555;padding-left:0}table.kv td{font-variant-numeric:tabular-nums}
table.metrics td,table.timing td{text-align:right;font-variant-numeric:tabular-nums}
table.metrics tr:nth-child(even),table.timing tr:nth-child(even){background:#f6f7f9}
thead th{border-bottom:1px solid #ccc}
details{margin:4px 0}summary{cursor:pointer;font-weight:500}
svg.figure{width:100%;height:auto;display:block;margin:8px 0}
.statement{font-weight:600;margin:0 0 6px}.note{color:#555;font-size:12.5px;margin:0 0 8px}
.sample{border-top:1px solid #e2e5ea;padding:8px 0}.prompt{font-weight:600;margin-bottom:4px}
.gens{display:grid;grid-template-columns:repeat(3,1fr);gap:10px}
.gen{background:#f6f7f9;border-radius:5px;padding:6px 8px;white-space:pre-wrap;font-size:13px}
.gen .who{font-size:11px;text-transform:uppercase;letter-spacing:.05em;font-weight:700;margin-bottom:2px}
.gen.base .who{color:#7f7f7f}.gen.steered .who{color:#c96a12}.gen.student .who{color:#1f6fb4}
.empty{color:#999;font-style:italic}
"""


def render_parts(run: RunView) -> list[Part]:
    return [part for section in SECTIONS if (part := section(run)) is not None]


def page(run: RunView, parts: list[Part]) -> str:
    title = f"steerheal run {run.name}"
    nav = "".join(f"<a href='#{p.key}'>{esc(p.title)}</a>" for p in parts)
    body = "".join(f"<section id='{p.key}'><h2>{esc(p.title)}</h2>{p.html}</section>" for p in parts)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><nav>{nav}</nav>{body}</main></body></html>"
    )


def markdown(run: RunView, parts: list[Part]) -> str:
    out = [f"# steerheal run {run.name}", ""]
    for part in parts:
        if part.markdown:
            out += [f"## {part.title}", "", part.markdown.rstrip(), ""]
    return "\n".join(out)


def build(directory: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and each section's PNG (trajectory.png, timing.png, frontier.png when the
    run has a frontier) into the run directory, from events.jsonl alone; returns {"md", "html", "png",
    <file name>: path}."""
    run_dir, run = open_view(directory)
    parts = render_parts(run)
    paths = {"md": run_dir.root / "report.md", "html": run_dir.root / "report.html"}
    atomic_write_bytes(paths["md"], markdown(run, parts).encode())
    atomic_write_bytes(paths["html"], page(run, parts).encode())
    for part in parts:
        for name, data in part.pngs.items():
            paths[name] = run_dir.root / name
            atomic_write_bytes(paths[name], data)
    paths["png"] = paths["trajectory.png"]
    return paths
