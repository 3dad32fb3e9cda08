"""Static figures for the report: small multiples drawn by matplotlib, as inline SVG (text kept as text, a
fixed id salt, no date: the same events give the same bytes) and as PNG.

Every panel's y-range is set from all of its series (padded), so no series is cut off; a threshold outside
that range is written in the panel's corner instead of stretching it.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

COLORS = {"base": "#7f7f7f", "steered": "#e6862e", "student": "#1f6fb4", "steering": "#e6862e"}
CYCLE = ["#1f6fb4", "#e6862e", "#3a9a4a", "#b33d3d", "#7a4fb0", "#7f7f7f"]


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float | None]
    color: str | None = None
    dashed: bool = False
    notes: list[str] | None = None  # a label per point (alpha, g)


@dataclass
class Panel:
    title: str
    series: list[Series]
    lines: list[tuple[str, float]] = field(default_factory=list)  # (label, y): thresholds
    xlabel: str = "round"
    logx: bool = False
    integer_x: bool = True


def _finite(values: list[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def limits(values: list[float], pad: float = 0.08) -> tuple[float, float]:
    """A y-range holding every value, padded by `pad` of the span (a flat series gets a unit-relative pad)."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.5
    return lo - pad * span, hi + pad * span


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "steerheal-report",
            "font.size": 8,
            "axes.titlesize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.fontsize": 7,
            "legend.frameon": False,
        }
    )
    return plt


def small_multiples(panels: list[Panel], columns: int = 4, size: tuple[float, float] = (3.3, 2.8)) -> Any:
    """One figure, one panel per quantity, `columns` a row."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = math.ceil(len(panels) / columns)
    cols = min(columns, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels, strict=False):
        values: list[float] = []
        xs: list[float] = []
        for i, s in enumerate(panel.series):
            ys = [v if v is not None and math.isfinite(v) else math.nan for v in s.y]
            color = s.color or CYCLE[i % len(CYCLE)]
            ax.plot(s.x, ys, marker="o", ms=3.5, lw=1.6, color=color, ls="--" if s.dashed else "-", label=s.label)
            for x, y, note in zip(s.x, ys, s.notes or [], strict=False):
                if math.isfinite(y):
                    ax.annotate(note, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
            values += _finite(s.y)
            xs += [float(x) for x in s.x]
        lo, hi = limits(values)
        outside = []
        for label, y in panel.lines:
            if lo <= y <= hi:
                ax.axhline(y, color="#b33d3d", lw=0.9, ls=":")
                ax.annotate(label, (0.99, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=6)
            else:
                outside.append(f"{label} ({'above' if y > hi else 'below'})")
        if outside:
            ax.text(
                0.99,
                0.99,
                "\n".join(outside),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=6,
                color="#b33d3d",
            )
        ax.set_ylim(lo, hi)
        if panel.logx:
            ax.set_xscale("log")
        elif panel.integer_x and xs:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(min(xs) - 0.3, max(xs) + 0.3)
        ax.set_title(panel.title, loc="left")
        ax.set_xlabel(panel.xlabel, labelpad=1)
        ax.grid(alpha=0.25)
        if len(panel.series) > 1:  # under the axes, never over a line
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(panel.series)), handlelength=1.5)
    fig.tight_layout()
    return fig


def render(fig: Any, dpi: int = 110) -> tuple[str, bytes]:
    """(inline SVG, PNG bytes) of a figure, then closed. The SVG scales to its container's width."""
    plt = pyplot()
    svg, png = io.StringIO(), io.BytesIO()
    fig.savefig(svg, format="svg", metadata={"Date": None})
    fig.savefig(png, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    text = svg.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg") :], flags=re.DOTALL)
    text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="figure"', text, count=1)
    return text, png.getvalue()
