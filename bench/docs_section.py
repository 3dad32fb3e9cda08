"""Write a benchmark's output into its marked section of a docs page, so no figure is typed by hand.

A section is delimited by `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; everything between is replaced
by the captured output and a line saying which command produced it, when, and at which commit.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True)
    return (out.stdout.strip() or "uncommitted") + (" + local changes" if dirty.stdout.strip() else "")


def run_into_docs(page: str, name: str, command: str, main: Callable[[], None]) -> None:
    """Run `main`, echo its output, and (unless --no-write) put it into docs/<page> section `name`."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main()
    output = buffer.getvalue()
    print(output, end="")
    if "--no-write" in sys.argv:
        return
    path = ROOT / "docs" / page
    text = path.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no section {start} ... {end}")
    stamp = f"`{command}` on {datetime.date.today().isoformat()}, commit {_commit()}:"
    body = f"{start}\n{stamp}\n\n{output.rstrip()}\n{end}"
    path.write_text(text[: text.index(start)] + body + text[text.index(end) + len(end) :])
    print(f"wrote {path.relative_to(ROOT)} section {name}")
