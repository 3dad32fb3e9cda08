"""Copy a finished run's report (report.md, its figures and a screenshot of report.html) into docs/, so a real
model's figures in the docs come from its run, not from memory: `just run-doc RUN NAME ["COMMAND"]` (the command
line that made the run, named in the header: a run folder records its whole config, not how it was typed).

Writes docs/NAME.md (a header naming the run's command, model, seed, commit, threads and each attempt's start,
then the run's report.md), copies frontier.png and trajectory.png as docs/NAME-frontier.png /
docs/NAME-trajectory.png when they exist, and screenshots report.html with `just report-screenshot` (when
Chromium is installed) as docs/report-NAME.png.
Whatever the page held from the line `<!-- run-doc: kept below -->` on (measurements written by other bench
scripts, such as the smollm2 sweep) is kept after the new report.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEEP = "<!-- run-doc: kept below -->"


def main(run: Path, name: str) -> None:
    config = json.loads((run / "config.json").read_text())
    env = json.loads((run / "env.json").read_text()) if (run / "env.json").is_file() else {}
    report = (run / "report.md").read_text()
    for figure in ("frontier", "trajectory"):
        if (run / f"{figure}.png").is_file():
            shutil.copyfile(run / f"{figure}.png", ROOT / "docs" / f"{name}-{figure}.png")
            report = report.replace(f"({figure}.png)", f"({name}-{figure}.png)")
    attempts = [a for a in env.get("attempts") or [env] if isinstance(a, dict)]
    commit = next((a.get("git_commit") for a in attempts if a.get("git_commit")), None)
    dirty = " with uncommitted changes to steerheal's code" if any(a.get("git_dirty") for a in attempts) else ""
    command = sys.argv[3] if len(sys.argv) > 3 else None  # the run records its config, not its command line
    how = f" with `{command}`" if command else ""
    runs = "; ".join(
        f"attempt {a.get('attempt')} started {a.get('started')}, {a.get('threads')} torch thread(s)" for a in attempts
    )
    shot = _screenshot(run, ROOT / "docs" / f"report-{name}.png")
    header = (
        f"# A {config['model']} run ({config['name']}, seed {config['seed']})\n\n"
        f"Copied from the run's own report.md by `just run-doc {run} {name}` on {datetime.date.today().isoformat()}; "
        f"the run was made at commit {commit or 'unknown'}{dirty}{how} (its config.json holds every option; "
        f"{runs}). Nothing below is typed by hand.\n\n"
        + (f"![the report of this run](report-{name}.png)\n\n" if shot else "")
    )
    page = ROOT / "docs" / f"{name}.md"
    old = page.read_text() if page.is_file() else ""
    kept = "\n" + old[old.index(KEEP) :] if KEEP in old else ""
    page.write_text(header + report.split("\n", 1)[1].rstrip("\n") + "\n" + kept)
    print(f"docs/{name}.md")


def _screenshot(run: Path, png: Path) -> bool:
    """report.html as a reader sees it, 1200 px wide, by `just report-screenshot` (headless Chromium); False when
    that recipe fails (no Chromium installed)."""
    made = subprocess.run(
        ["just", "--justfile", str(ROOT / "justfile"), "report-screenshot", str(run), "1200", "1800"],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0 or not (run / "report.png").is_file():
        return False
    shutil.copyfile(run / "report.png", png)
    return True


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
