"""Copy a finished run's report (report.md, its figures and a screenshot of report.html) into docs/, so a real
model's figures in the docs come from its run, not from memory: `just run-doc RUN NAME ["COMMAND"]` (the command
line that made the run, named in the header: a run folder records its whole config, not how it was typed).

Writes docs/NAME.md (a header naming the run's command, model, seed and commit, then the run's report.md) and
copies frontier.png and trajectory.png as docs/NAME-frontier.png / docs/NAME-trajectory.png when they exist.
Whatever the page held from the line `<!-- run-doc: kept below -->` on (measurements written by other bench
scripts, such as the smollm2 sweep) is kept after the new report.
"""

from __future__ import annotations

import datetime
import json
import shutil
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
    attempts = env.get("attempts") or [env]
    commit = next((a.get("git_commit") for a in attempts if isinstance(a, dict) and a.get("git_commit")), None)
    command = sys.argv[3] if len(sys.argv) > 3 else None  # the run records its config, not its command line
    how = f" with `{command}`" if command else ""
    header = (
        f"# A {config['model']} run ({config['name']}, seed {config['seed']})\n\n"
        f"Copied from the run's own report.md by `just run-doc {run} {name}` on {datetime.date.today().isoformat()}; "
        f"the run was made at commit {commit or 'unknown'}{how} (its config.json holds every option). Nothing below "
        "is typed by hand.\n\n"
    )
    page = ROOT / "docs" / f"{name}.md"
    old = page.read_text() if page.is_file() else ""
    kept = "\n" + old[old.index(KEEP) :] if KEEP in old else ""
    page.write_text(header + report.split("\n", 1)[1].rstrip("\n") + "\n" + kept)
    print(f"docs/{name}.md")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
