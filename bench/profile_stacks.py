"""Where a smollm2 round's time goes: py-spy's sampled stacks, split by the loop's stages.

`python bench/profile_stacks.py STACKS [--section NAME]` reads py-spy's raw output (`py-spy record --format raw`,
one collapsed stack and its sample count per line), assigns each sample to the loop stage whose function is on its
stack (extract, calibrate, pairs, reference, heal, verify), and prints each stage's share of the samples and the
functions it spends them in: the leaf frames (self time) and the steerheal / torch.nn / transformers frames
(inclusive). py-spy samples from outside the process, so the profiled run is not slowed as under cProfile.
Writes docs/benchmarks.md section `smollm2-profile` unless --no-write.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

STAGES = (  # (stage, function, its file)
    ("extract", "round_teacher", "loop/concept_parts.py"),
    ("calibrate", "calibrate_dose", "dose/calibrate.py"),
    ("pairs", "dose_walk", "dose/walk.py"),
    ("pairs", "walk_and_pair", "dose/walk.py"),
    ("reference", "build_reference", "loop/verify.py"),
    ("heal", "heal", "training/heal.py"),
    ("verify", "verify_round", "loop/verify.py"),
)
OURS = ("steerheal/", "torch/optim", "torch/autograd/__init__")  # frames counted inclusive (under a stage)
SKIP = ("wrapper (", "Loop.", "heal_and_verify", "<module>", "main (", "measure (")


def _short(frame: str) -> str:
    """'fn (path/to/site-packages/pkg/mod.py:12)' -> 'fn (pkg/mod.py)'."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\(.*?(site-packages/|src/)", "(", frame)


def profile(path: Path) -> None:
    samples: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n, frames = int(count), stack.split(";")
        stage = next(
            (name for name, fn, file in STAGES if any(f.startswith(f"{fn} (") and file in f for f in frames)), "other"
        )
        samples[stage] += n
        leaves[stage][_short(frames[-1])] += n
        below = next((i for i, f in enumerate(frames) if any(f.startswith(f"{fn} (") for _, fn, _ in STAGES)), 0)
        for frame in {_short(f) for f in frames[below + 1 :] if any(o in f for o in OURS)}:
            if not any(k in frame for k in SKIP):
                inclusive[stage][frame] += n
    total = sum(samples.values())
    print(f"{total} samples (py-spy, 20 per second, nonblocking) of {path.name}")
    print()
    print("| stage | share of samples |")
    print("|---|---|")
    for stage, n in samples.most_common():
        print(f"| {stage} | {n / total:.1%} |")
    for stage, n in samples.most_common():
        if stage == "other" or n / total < 0.02:
            continue
        print(f"\n**{stage}**: leaf frames (self time); steerheal's functions under the stage (inclusive)\n")
        print("| self | frame | | inclusive | frame |")
        print("|---|---|---|---|---|")
        top_self, top_incl = leaves[stage].most_common(6), inclusive[stage].most_common(6)
        for (f1, m1), (f2, m2) in zip(top_self, top_incl, strict=False):
            print(f"| {m1 / n:.0%} | `{f1[:90]}` | | {m2 / n:.0%} | `{f2[:90]}` |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from docs_section import run_into_docs

    stacks = Path(sys.argv[1])
    command = f"python bench/profile_stacks.py {stacks.name}"
    run_into_docs("benchmarks.md", "smollm2-profile", command, lambda: profile(stacks))
