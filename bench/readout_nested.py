"""Readouts with the layer and method chosen on inner folds (`read/selection.py`), scored on held-out texts.

For each outer seed s, `corpus.split(0.3, s)` gives a training and a held-out part. On the training part only,
`choose` scores mean_diff at every layer on inner splits (the layer profile) and picks the layer, then scores
every method at that layer and picks the method. Every method is then refitted on the whole training part at
the chosen layer and scores the held-out texts: per concept AUROC (one-vs-rest, chance 0.5) and top-1 (over
all concepts, chance 1/K). The "inner-fold choice" column is, per outer split, the chosen method's figures.
Intervals are 95% stratified bootstrap intervals of the AUROC averaged over the outer splits
(`bootstrap_auroc`: held-out texts resampled, readouts fixed). The layer profile also shows mean_diff's
held-out figures per layer: shown, never used to choose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import torch

import steerheal as sh
from steerheal.loop.report import markdown
from steerheal.read.corpus_activations import CorpusActivations
from steerheal.read.quality import auroc, project_heldout
from steerheal.read.readout_files import READOUT_METHODS
from steerheal.read.selection import INNER_SEEDS, bootstrap_auroc, choose, view

CHOICE = "inner-fold choice"
FLOOR = 0.8  # no concept's interval entirely below it (issue 22)


@dataclass
class Nested:
    rows: list[dict] = field(default_factory=list)  # seed, method, layer, concept, auroc, top1
    scores: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    choices: list[dict] = field(default_factory=list)
    profile: list[dict] = field(default_factory=list)  # seed, layer, inner, held-out AUROC, top-1 (mean_diff)
    failed: list[str] = field(default_factory=list)


def _heldout(acts: CorpusActivations, corpus: sh.Corpus, method: str, layers: list[int], seed: int):
    train, test = corpus.split(0.3, seed)
    source = view(acts, method, layers)
    return project_heldout(sh.Readout.fit(source, train, method), source, train, test)


def evaluate(acts: CorpusActivations, corpus: sh.Corpus, layers: list[int], seeds: list[int]) -> Nested:
    out = Nested()
    for seed in seeds:
        train, _ = corpus.split(0.3, seed)
        choice = choose(acts, train, layers, list(READOUT_METHODS))
        out.failed += [f"split seed {seed}, inner folds: {line}" for line in choice.failed]
        labels, per_layer = _heldout(acts, corpus, "mean_diff", layers, seed)
        for layer, (raw, hit) in per_layer.items():
            aucs = [auroc(raw[labels[:, j], j], raw[~labels[:, j], j]) for j in range(labels.shape[1])]
            top1 = [float(hit[labels[:, j]].float().mean()) for j in range(labels.shape[1])]
            out.profile.append(
                {
                    "seed": seed,
                    "layer": layer,
                    "inner": choice.scores[(layer, "mean_diff")],
                    "auroc": sum(aucs) / len(aucs),
                    "top1": sum(top1) / len(top1),
                }
            )
        for method in READOUT_METHODS:
            try:
                labels, per_layer = _heldout(acts, corpus, method, [choice.layer], seed)
            except sh.SteerhealError as err:  # reported, not hidden
                out.failed.append(f"split seed {seed}, {method} at layer {choice.layer}: {err}")
                continue
            raw, hit = per_layer[choice.layer]
            names = [method, CHOICE] if method == choice.method else [method]
            for j, concept in enumerate(corpus.concepts):
                pos, neg = raw[labels[:, j], j], raw[~labels[:, j], j]
                for name in names:
                    out.rows.append(
                        {
                            "seed": seed,
                            "method": name,
                            "layer": choice.layer,
                            "concept": concept,
                            "auroc": auroc(pos, neg),
                            "top1": float(hit[labels[:, j]].float().mean()),
                        }
                    )
                    out.scores.setdefault((name, concept), []).append((pos, neg))
        inner = choice.scores[(choice.layer, choice.method)]
        out.choices.append({"split seed": seed, "layer": choice.layer, "method": choice.method, "inner AUROC": inner})
    return out


def per_concept(nested: Nested) -> pl.DataFrame:
    """method, concept, mean AUROC over the outer splits with its bootstrap interval, mean top-1."""
    figures = (
        pl.DataFrame(nested.rows)
        .group_by("method", "concept", maintain_order=True)
        .agg(pl.col("auroc").mean(), pl.col("top1").mean(), pl.len().alias("splits"))
    )
    bounds = [
        bootstrap_auroc(*zip(*nested.scores[(m, c)], strict=True))
        for m, c in figures.select("method", "concept").iter_rows()
    ]
    return figures.with_columns(low=pl.Series([b[0] for b in bounds]), high=pl.Series([b[1] for b in bounds]))


def _cell(auc: float, low: float, high: float) -> str:
    return f"{auc:.3f} [{low:.2f}, {high:.2f}]"


def report(acts: CorpusActivations, corpus: sh.Corpus, layers: list[int], seeds: list[int], label: str) -> None:
    nested = evaluate(acts, corpus, layers, seeds)
    figures = per_concept(nested)
    k = len(corpus.concepts)
    print(
        f"{label}: {k} concepts, {len(corpus)} unique texts; {len(seeds)} outer 30% splits (seeds {seeds}); on each "
        f"training part, {len(INNER_SEEDS)} inner 30% splits choose the layer (mean_diff over layers "
        f"{layers[0]}-{layers[-1]}) and then the method at that layer. Intervals: 95% stratified bootstrap of the "
        "held-out texts.\n"
    )
    print("Choices (made on the training part of each outer split):\n")
    print(markdown(pl.DataFrame(nested.choices)))
    names = [CHOICE, *READOUT_METHODS]
    summary = (
        figures.group_by("method", maintain_order=True)
        .agg(
            pl.col("auroc").mean().alias("mean AUROC"),
            pl.col("auroc").median().alias("median AUROC"),
            pl.col("auroc").min().alias("worst AUROC"),
            (pl.col("high") < FLOOR).sum().alias(f"intervals below {FLOOR}"),
            pl.col("top1").mean().alias("mean top-1"),
        )
        .with_columns(pl.lit(1 / k).alias("top-1 chance"))
        .sort(pl.col("method").replace_strict({n: i for i, n in enumerate(names)}))
    )
    print("\nHeld-out figures per method at the chosen layer (the first row: the chosen method):\n")
    print(markdown(summary))
    if nested.failed:
        print("\nFailed fits (left out of the figures above):\n")
        print("\n".join(f"- {line}" for line in nested.failed))
    cells = figures.with_columns(
        pl.struct("auroc", "low", "high")
        .map_elements(lambda r: _cell(r["auroc"], r["low"], r["high"]), pl.String)
        .alias("cell")
    )
    auroc_table = cells.pivot(on="method", index="concept", values="cell").select(
        "concept", *[n for n in names if n in cells["method"]]
    )
    print("\nPer concept, held-out AUROC [95% interval]:\n")
    print(markdown(auroc_table.sort("concept")))
    top1 = figures.pivot(on="method", index="concept", values="top1").select(
        "concept", *[n for n in names if n in figures["method"]]
    )
    print("\nPer concept, held-out top-1:\n")
    print(markdown(top1.sort("concept")))
    profile = (
        pl.DataFrame(nested.profile)
        .group_by("layer", maintain_order=True)
        .agg(
            pl.col("inner").mean().alias("inner-fold AUROC (chooses)"),
            pl.col("auroc").mean().alias("held-out AUROC (shown only)"),
            pl.col("top1").mean().alias("held-out top-1"),
        )
    )
    print("\nLayer profile, mean_diff, mean over concepts and splits:\n")
    print(markdown(profile))
    chosen = figures.filter(pl.col("method") == CHOICE).sort("auroc")
    weakest = "; ".join(
        _cell(r["auroc"], r["low"], r["high"]).join([f"{r['concept']} ", ""])
        for r in chosen.head(4).iter_rows(named=True)
    )
    below = chosen.filter(pl.col("high") < FLOOR)["concept"].to_list()
    print(
        f"\nInner-fold choice: mean held-out AUROC {chosen['auroc'].mean():.3f}, top-1 {chosen['top1'].mean():.3f}; "
        f"weakest: {weakest}; concepts whose interval lies entirely below {FLOOR}: {', '.join(below) or 'none'}."
    )
