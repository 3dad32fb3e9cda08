"""The bank's report: the cross-talk section (K×K table and heat map, kept share of steering, composition, the
targets with their measured values) and a bank page that links each concept's own run report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerheal.files import atomic_write_bytes
from steerheal.loop.report.figures import pyplot, render
from steerheal.loop.report.markup import Part, esc, html_table, md_table
from steerheal.loop.report.page import CSS


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _heat_map(result: dict[str, Any]) -> Any:
    plt = pyplot()
    names, table = result["concepts"], result["relative"]
    values = [[v if v is not None else float("nan") for v in row] for row in table]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 1.0 + 0.8 * len(names)))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("dial turned to 1")
    ax.set_ylabel("concept measured")
    for a, row in enumerate(table):
        for b, v in enumerate(row):
            shift = result["table"][a][b]
            dark = v is not None and abs(v) > 0.6
            ax.text(
                b, a, f"{_f(v, 2)}\n({shift:+.3f})", ha="center", va="center", fontsize=7, color="w" if dark else "k"
            )
    fig.colorbar(image, ax=ax, shrink=0.8, label="shift / own shift")
    ax.set_title("cross-talk: shift of the row concept / its own shift")
    fig.tight_layout()
    return fig


def crosstalk_section(result: dict[str, Any]) -> Part:
    """The K×K table (absolute and relative), keep, composition and targets, with the heat map."""
    names = result["concepts"]
    head = ["measured \\ dial", *names]
    absolute = [[i, *(_f(v) for v in row)] for i, row in zip(names, result["table"], strict=True)]
    relative = [[i, *(_f(v, 2) for v in row)] for i, row in zip(names, result["relative"], strict=True)]
    composition = [[i, *(_f(v, 2) for v in row)] for i, row in zip(names, result["composition"], strict=True)]
    keep = [[n, result["measure"][n], f"{result['base'][n]:.3f}", f"{result['steered'][n]:.3f}",
             f"{result['alone'][n][n]:.3f}", _f(result["keep"][n], 2)] for n in names]  # fmt: skip
    keep_head = ["concept", "measure", "base", "steered (round-0 teacher)", "its dial at 1", "keep"]
    target_rows = [
        [group, name, _f(entry["value"], 2), {True: "met", False: "not met", None: "undefined"}[entry["met"]]]
        for group, entries in result.get("targets", {}).items()
        for name, entry in entries.items()
    ]
    svg, png = render(_heat_map(result))
    note = (
        f"{result['n_prompts']} held-out prompts, seed {result['seed']}; every variant samples the same prompts with "
        "the same seeds. Row i, column j: how far concept i moved when only dial j is at 1 (the others at 0)."
    )
    html = (
        f"<p class='note'>{esc(note)}</p>{svg}<h3>shift of concept i (row) with dial j (column) at 1</h3>"
        + html_table(head, absolute, "metrics")
        + "<h3>relative to the concept's own shift</h3>"
        + html_table(head, relative, "metrics")
        + "<h3>each concept at its dial 1 against steering</h3>"
        + html_table(keep_head, keep, "metrics")
        + "<h3>composition: concept i's shift with i and j at 1, over i alone</h3>"
        + html_table(head, composition, "metrics")
        + ("<h3>targets</h3>" + html_table(["target", "which", "measured", ""], target_rows) if target_rows else "")
    )
    md = "\n\n".join(
        [
            note,
            "![cross-talk](crosstalk.png)",
            "Shift of concept i (row) with dial j (column) at 1:\n\n" + md_table(head, absolute),
            "Relative to the concept's own shift:\n\n" + md_table(head, relative),
            "Each concept at its dial 1 against steering:\n\n" + md_table(keep_head, keep),
            "Composition (concept i's shift with i and j at 1, over i alone):\n\n" + md_table(head, composition),
            *(["Targets:\n\n" + md_table(["target", "which", "measured", ""], target_rows)] if target_rows else []),
        ]
    )
    return Part("crosstalk", "cross-talk", html, md, {"crosstalk.png": png})


def write_bank_report(root: Path, result: dict[str, Any], concept_reports: dict[str, str]) -> dict[str, Path]:
    """report.md, report.html and crosstalk.png of a bank run, in its folder."""
    part = crosstalk_section(result)
    links = "".join(f"<li><a href='{esc(path)}'>{esc(name)}</a></li>" for name, path in concept_reports.items())
    title = f"steerheal bank {root.name}"
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main><h1>{esc(title)}</h1>"
        f"<section><h2>concepts</h2><ul class='run'>{links}</ul></section>"
        f"<section id='{part.key}'><h2>{esc(part.title)}</h2>{part.html}</section></main></body></html>"
    )
    md_links = "\n".join(f"- [{name}]({path})" for name, path in concept_reports.items())
    md = f"# {title}\n\n## concepts\n\n{md_links}\n\n## {part.title}\n\n{part.markdown}\n"
    paths = {"md": root / "report.md", "html": root / "report.html", "png": root / "crosstalk.png"}
    atomic_write_bytes(paths["md"], md.encode())
    atomic_write_bytes(paths["html"], page.encode())
    atomic_write_bytes(paths["png"], part.pngs["crosstalk.png"])
    return paths
