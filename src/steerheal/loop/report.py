"""A run's report, regenerated from events.jsonl alone: a markdown table, an HTML page and a PNG.

Each round counts once: only the `round_end` event of the attempt named in the round's manifest is read, so
a round replayed after a kill is never double-counted. Nothing is typed by hand. The HTML page embeds
plotly.js (it works offline); the PNG is drawn by matplotlib (plotly's PNG export needs a browser download).
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path
from typing import Any

import polars as pl

from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_bytes
from steerheal.loop.rundir import RunDir, open_existing


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


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


def table(run: RunDir) -> pl.DataFrame:
    rows = []
    for event in round_events(run):
        m = event["metrics"]
        row = {
            "round": event["round"],
            "c*": m["dose"]["c"],
            "alpha": m["dose"]["alpha"],
            "pairs kept": f"{m['dose']['kept']}/{m['dose']['pairs']}",
            "lam": m["heal"]["lam"],
            "trait base": m["trait"]["base"],
            "trait steered": m["trait"]["steered"],
            "trait student": m["trait"]["student"],
            "retain": _num(m["retain"]),
            "off-target moved": m["off_target"]["moved"],
            "KL(student‖base) p95": m["coherence"]["kl_tail_p95"],
            "distinct-2": m["coherence"]["distinct_2"],
            "ppl under base": m["coherence"]["ppl_under_base"],
            "cos(v, v0)": m["direction"]["cos_to_round0_mean"],
            "noise ceiling": m["direction"]["noise_ceiling_mean"],
            "internalisation cos": m["internalisation"]["cos_mean"],
        }
        if "truth" in m:
            truth = m["truth"]
            row.update(
                {
                    "mood base": truth["base"]["mood_rate"],
                    "mood steered": truth["steered"]["mood_rate"],
                    "mood student": truth["student"]["mood_rate"],
                    "retain (mood)": _num(m["retain_mood"]),
                    "off-target mood base": truth["base"]["off_target_mood_rate"],
                    "off-target mood student": truth["student"]["off_target_mood_rate"],
                    "grammar student": truth["student"]["grammar_ok"],
                    "grammar steered": truth["steered"]["grammar_ok"],
                }
            )
        if "readout" in m:
            row.update(
                {
                    "readout cos": m["readout"]["cos_mean"],
                    "readout AUROC base": m["readout"]["auroc_base_mean"],
                    "readout AUROC student": m["readout"]["auroc_student_mean"],
                }
            )
        row["stop"] = event.get("stop") or ""
        rows.append(row)
    return pl.DataFrame(rows)


def markdown(df: pl.DataFrame) -> str:
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        tbl_rows=-1,
        tbl_cols=-1,
        float_precision=3,
        fmt_str_lengths=120,
        tbl_width_chars=1000,
    ):
        return str(df)


def _figures(df: pl.DataFrame) -> list[Any]:
    import plotly.graph_objects as go

    rounds = df["round"].to_list()
    figures = []
    trait = go.Figure()
    for column in ("trait base", "trait steered", "trait student"):
        trait.add_trace(go.Scatter(x=rounds, y=df[column].to_list(), mode="lines+markers", name=column))
    trait.update_layout(
        title="Trait (teacher projection of generations): base vs steered vs student", xaxis_title="round"
    )
    figures.append(trait)
    if "mood student" in df.columns:
        mood = go.Figure()
        for column in ("mood base", "mood steered", "mood student", "grammar student"):
            mood.add_trace(go.Scatter(x=rounds, y=df[column].to_list(), mode="lines+markers", name=column))
        mood.update_layout(title="Ground truth: mood rate and grammar", xaxis_title="round")
        figures.append(mood)
    coherence = go.Figure()
    for column in ("KL(student‖base) p95", "distinct-2", "retain"):
        coherence.add_trace(go.Scatter(x=rounds, y=df[column].to_list(), mode="lines+markers", name=column))
    coherence.update_layout(title="Coherence and retain", xaxis_title="round")
    figures.append(coherence)
    direction = go.Figure()
    for column in ("cos(v, v0)", "noise ceiling", "internalisation cos"):
        direction.add_trace(go.Scatter(x=rounds, y=df[column].to_list(), mode="lines+markers", name=column))
    direction.update_layout(
        title="Direction: re-extracted vs round 0, noise ceiling, internalisation", xaxis_title="round"
    )
    figures.append(direction)
    return figures


def _samples_html(events: list[dict[str, Any]]) -> str:
    parts = []
    for event in events:
        for sample in event.get("samples", []):
            cells = "".join(f"<td>{html.escape(sample[k])}</td>" for k in ("prompt", "base", "steered", "student"))
            parts.append(f"<tr><td>{event['round']}</td>{cells}</tr>")
    head = "<tr><th>round</th><th>prompt</th><th>base</th><th>steered</th><th>student</th></tr>"
    return f"<table border='1' cellpadding='4'>{head}{''.join(parts)}</table>"


def _png(df: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = df["round"].to_list()
    panels = [
        ("trait base", "trait steered", "trait student"),
        ("KL(student‖base) p95", "distinct-2"),
        ("cos(v, v0)", "noise ceiling", "internalisation cos"),
    ]
    if "mood student" in df.columns:
        panels.insert(1, ("mood base", "mood steered", "mood student", "grammar student"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, columns in zip(axes, panels, strict=True):
        for column in columns:
            ax.plot(
                rounds, [v if v is not None else float("nan") for v in df[column].to_list()], marker="o", label=column
            )
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


def build(directory: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and trajectory.png into the run directory; returns their paths."""
    run = open_existing(Path(directory))
    events = round_events(run)
    if not events:
        raise SteerhealError(f"run {run.root} has no complete round to report")
    df = table(run)
    stop = run.stop_record()
    title = f"steerheal run {run.root.name}"
    md = f"# {title}\n\n{markdown(df)}\n\nStopped: {stop['reason'] if stop else 'not yet (the run is unfinished)'}\n"
    paths = {"md": run.root / "report.md", "html": run.root / "report.html", "png": run.root / "trajectory.png"}
    atomic_write_bytes(paths["md"], md.encode())
    figures = _figures(df)
    body = "".join(
        fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False) for i, fig in enumerate(figures)
    )
    page = (
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{_html_table(df)}"
        f"{body}<h2>Samples: base / steered / student on the same prompts</h2>{_samples_html(events)}"
        "</body></html>"
    )
    atomic_write_bytes(paths["html"], page.encode())
    _png(df, paths["png"])
    return paths


def _html_table(df: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for row in df.iter_rows():
        cells = "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table border='1' cellpadding='4'><tr>{head}</tr>{''.join(rows)}</table>"
