"""What a section gives the page (`Part`) and the small HTML and markdown builders sections share."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Part:
    """One section of the report: its anchor, title, HTML body, markdown text (may be empty) and the PNG
    files of its figures ({file name: bytes}, written beside report.html)."""

    key: str
    title: str
    html: str
    markdown: str = ""
    pngs: dict[str, bytes] = field(default_factory=dict)


def esc(value: Any) -> str:
    return html.escape(str(value))


def html_table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """A table of already formatted cells (strings are escaped; the first column is a row header)."""
    top = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = []
    for row in rows:
        cells = "".join(f"<th>{esc(c)}</th>" if i == 0 else f"<td>{esc(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table class='{cls}'><thead><tr>{top}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
