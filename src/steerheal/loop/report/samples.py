"""Sample generations: base, steered and the last round's student side by side for the same prompts (same
sampling seeds), with each earlier round's student folded away under the prompt."""

from __future__ import annotations

import re

from steerheal.loop.report.events import RunView
from steerheal.loop.report.markup import Part, esc

VARIANTS = ("base", "steered", "student")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _text(value: str) -> str:
    """A generation as HTML; control characters (which HTML cannot show) written as \\xNN."""
    if not value.strip():
        return "<span class='empty'>(empty)</span>"
    return esc(CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value))


def samples_section(run: RunView) -> Part | None:
    last = run.rounds[-1]
    samples = last.get("samples") or []
    if not samples:
        return None
    earlier = {e["round"]: {s["prompt"]: s["student"] for s in e.get("samples", [])} for e in run.rounds[:-1]}
    blocks = []
    for sample in samples:
        cells = "".join(f"<div class='gen {v}'><div class='who'>{v}</div>{_text(sample[v])}</div>" for v in VARIANTS)
        history = [(k, texts[sample["prompt"]]) for k, texts in earlier.items() if sample["prompt"] in texts]
        folded = ""
        if history:
            rows = "".join(f"<tr><th>round {k}</th><td>{_text(text)}</td></tr>" for k, text in history)
            folded = f"<details><summary>the student in earlier rounds</summary><table>{rows}</table></details>"
        blocks.append(
            f"<div class='sample'><div class='prompt'>{esc(sample['prompt'])}</div>"
            f"<div class='gens'>{cells}</div>{folded}</div>"
        )
    note = (
        f"<p class='note'>Held-out prompts, the same sampling seed for every variant; the student after round "
        f"{last['round']}, steered = the base steered by round 0's teacher at the dose its pairs used.</p>"
    )
    return Part("samples", "Samples: base / steered / student", note + "".join(blocks))
