"""`just bench-toyworld`: the method on toyworld, 3 rounds x 3 seeds, and its ablation; writes docs/results.md.

Variants at the same budget (the toyworld preset's dose, data, adapter and optimiser; only the loss differs):
- `sft`: plain SFT on the steered completions (pref none, no barrier: lam 0);
- `orpo+barrier`: SFT + ORPO + the reverse-KL barrier (the preset);
- `dpo+barrier`: SFT + DPO + the reverse-KL barrier;
- `orpo, no barrier`: SFT + ORPO with lam 0 (what the barrier adds);
- `orpo+barrier, ref prev`: the preset with the barrier anchored to the previous student, not the base.
The stop rules are switched off so every run shows all rounds; the coherence floor is reported as a column.
Mean and spread (min..max over seeds) per round. Every figure comes from the runs this command makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import statistics
import sys
import time
from pathlib import Path

import polars as pl
import torch

from steerheal.loop.report import markdown, table
from steerheal.loop.rounds import run
from steerheal.loop.runconfig import preset
from steerheal.loop.rundir import open_existing

SEEDS = (0, 1, 2)
ROUNDS = 3
RUNS = Path("runs/bench-toyworld")
METRICS = (  # columns of the run report's table (steerheal.loop.report.table), summarised over seeds
    "mood base",
    "mood steered",
    "mood student",
    "retain",
    "retain (mood)",
    "grammar student",
    "grammar steered",
    "off-target mood moved",
    "cos(v, v0)",
    "noise ceiling",
    "internalisation cos",
    "KL(student‖base) p95",
    "readout cos",
)


def variants() -> dict[str, object]:
    base = preset("toyworld")
    return {
        "sft": dataclasses.replace(base.heal, pref="none", lam=0.0),
        "orpo+barrier": base.heal,
        "dpo+barrier": dataclasses.replace(base.heal, pref="dpo"),
        "orpo, no barrier": dataclasses.replace(base.heal, lam=0.0),
        "orpo+barrier, ref prev": dataclasses.replace(base.heal, kl_ref="prev"),
    }


def one(name: str, heal: object, seed: int) -> pl.DataFrame:
    base = preset("toyworld")
    config = dataclasses.replace(
        base,
        name=re.sub(r"[^a-z0-9]+", "-", name) + f"-seed{seed}",
        runs_dir=RUNS,
        seed=seed,
        heal=heal,
        stop=dataclasses.replace(
            base.stop, max_rounds=ROUNDS, min_grammar_ok=0.0, min_distinct_2=0.0, max_kl_tail=1e9, min_trait_gain=-1e9
        ),
    )
    with contextlib.redirect_stdout(sys.stderr):  # the loop's per-round lines are progress, not results
        result = run(config, overwrite=True)
    rounds = table(open_existing(result.root))  # the run report's own table, read back from events.jsonl
    return rounds.with_columns(
        pl.lit(name).alias("variant"),
        pl.lit(seed).alias("seed"),
        (pl.col("off-target mood student") - pl.col("off-target mood base")).alias("off-target mood moved"),
    ).select("variant", "seed", "round", *METRICS)


def summarise(df: pl.DataFrame) -> pl.DataFrame:
    out = []
    for (variant, k), group in df.group_by(["variant", "round"], maintain_order=True):
        row: dict[str, object] = {"variant": variant, "round": k}
        for column in METRICS:
            values = [v for v in group[column].to_list() if v is not None]
            if not values:
                row[column] = "undefined"
                continue
            mean = statistics.fmean(values)
            row[column] = f"{mean:.3f} ({min(values):.3f}..{max(values):.3f})"
        out.append(row)
    return pl.DataFrame(out)


def main() -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    frames = []
    for name, heal in variants().items():
        for seed in SEEDS:
            frames.append(one(name, heal, seed))
            print(f"{name} seed {seed} done", file=sys.stderr, flush=True)
    df = pl.concat(frames)
    df.write_csv(RUNS / "results.csv")
    summary = summarise(df)
    keep = [
        "variant",
        "round",
        "mood base",
        "mood steered",
        "mood student",
        "retain (mood)",
        "retain",
        "grammar steered",
        "grammar student",
    ]
    print(
        f"{len(SEEDS)} seeds x {ROUNDS} rounds per variant; mean (min..max over seeds); "
        f"{time.perf_counter() - start:.0f} s in all.\n"
    )
    print("### Trait and coherence\n")
    print(markdown(summary.select(keep)))
    print("\n### Direction, internalisation, off-target, readouts\n")
    print(
        markdown(
            summary.select(
                [
                    "variant",
                    "round",
                    "cos(v, v0)",
                    "noise ceiling",
                    "internalisation cos",
                    "off-target mood moved",
                    "KL(student‖base) p95",
                    "readout cos",
                ]
            )
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from docs_section import run_into_docs

    run_into_docs("results.md", "toyworld", "just bench-toyworld", main)
