"""A readout's quality report: is each concept a clean, separate, readable direction?

Per concept and readout layer, from one capture pass over the corpus:

- `pc1_ratio`: the share of the positives' energy on their first principal axis, taken on the positives'
  offsets from the contrast mean (uncentred: the shared offset *is* the concept, so it must not be
  centred away). Above 0.7 the positives move one way (clean); below 0.4 they scatter (fragmented).
  `pc1_null` is the same figure for as many texts drawn from the concept's negatives (median of 8 seeded
  draws): what texts that share nothing but the corpus give, since few texts in many dimensions always
  show some first-axis share.
- `align_mean`, `align_min`, `outliers`: the cosine of each positive's offset with the concept's row; the
  two least aligned texts, by file and place, are the first to reread.
- `nearest`: the three other concepts with the highest cosine between rows.
- `ridge_r2`, `ridge_top`: how much of the row the other concepts' rows explain (ridge, alpha 0.01 on unit
  rows), with the three largest weights. Above 0.9 the concept is redundant. Chance for random rows is
  about (K − 1) / hidden, reported as `ridge_r2_chance` in the summary.
- `heldout_auroc`, `heldout_top1`: a readout refitted (same method, layers, position) on a seeded split of
  the corpus scores the held-out texts. AUROC is one-vs-rest on the raw projection (chance 0.5); top-1 is
  the share of the concept's held-out texts whose highest standardised score (each concept's projection
  z-scored over the training texts, so offsets do not decide) is this concept (chance 1/K).
- `mlp_cos`, `mlp_neuron`: the largest |cosine| between the row and any output column of the block's MLP
  (what one neuron writes). Above 0.5 the concept may be one neuron. `mlp_cos_chance` in the summary is
  the median of the same figure for 16 random directions.
- `spectrum` (subspace only): the top eigenvalues of the projector difference the direction came from.

The verdict is `redundant`, `one-neuron`, `fragmented` or `weak` (held-out AUROC below 0.7), joined when
several apply; otherwise `clean` (pc1_ratio >= 0.7) or `mixed`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, provenance
from steerheal.lm.blocks import mlp_write_directions
from steerheal.read.corpus import Corpus
from steerheal.read.corpus_activations import CorpusActivations, read_corpus
from steerheal.read.readout import Readout

CLEAN_PC1 = 0.7
FRAGMENTED_PC1 = 0.4
REDUNDANT_R2 = 0.9
ONE_NEURON_COS = 0.5
WEAK_AUROC = 0.7
RIDGE_ALPHA = 0.01
N_NEAREST = 3
N_OUTLIERS = 2
N_RANDOM_DIRECTIONS = 16
N_NULL_DRAWS = 8


def auroc(pos: Float[Tensor, " n_pos"], neg: Float[Tensor, " n_neg"]) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    if len(pos) == 0 or len(neg) == 0:
        raise SteerhealError("auroc needs at least one positive and one negative score")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def _pc1_ratio(offsets: Tensor) -> float:
    s = torch.linalg.svdvals(offsets.double())
    total = float((s**2).sum())
    return float(s[0] ** 2 / total) if total > 0 else float("nan")


def _ridge(target: Tensor, others: Tensor) -> tuple[float, Tensor]:
    """(R², weights) of `target` [d] on the rows of `others` [m, d]; R² is uncentred (rows are unit)."""
    if len(others) == 0:
        return 0.0, torch.zeros(0)
    t, o = target.double(), others.double()
    gram = o @ o.T + RIDGE_ALPHA * torch.eye(len(o), dtype=torch.float64)
    weights = torch.linalg.solve(gram, o @ t)
    residual = t - o.T @ weights
    return float(1 - residual @ residual / (t @ t)), weights.float()


def _source(corpus: Corpus, row: int) -> str:
    text = corpus.texts[row]
    preview = text[:48].replace("\n", " ") + ("…" if len(text) > 48 else "")
    return f"{corpus.sources[row][0]}: {preview!r}"


@dataclass
class QualityReport:
    """`table`: one row per (concept, layer); `summary`: the run's settings and chance levels."""

    table: Any  # polars.DataFrame
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "concepts": self.table.to_dicts(), **provenance()}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    def triage(self) -> str:
        s = self.summary
        lines = [
            f"readout quality: {s['n_concepts']} concepts, method {s['method']}, position {s['position']}, "
            f"layers {s['layers']}; held-out {s['n_heldout']} of {s['n_texts']} texts (seed {s['seed']})",
            f"chance: AUROC 0.5, top-1 {s['top1_chance']:.3f}, ridge R² {s['ridge_r2_chance']:.3f}, "
            f"MLP |cos| {s['mlp_cos_chance']:.3f}",
            f"{'concept':<16} {'layer':>5}  {'verdict':<22} {'pc1':>5} {'null':>5} {'align':>6} {'auroc':>6} "
            f"{'top1':>5} {'R²':>5} {'mlp':>5}  nearest",
        ]
        for row in self.table.iter_rows(named=True):
            lines.append(
                f"{row['concept']:<16} {row['layer']:>5}  {row['verdict']:<22} {row['pc1_ratio']:>5.2f} "
                f"{row['pc1_null']:>5.2f} "
                f"{row['align_mean']:>6.2f} {row['heldout_auroc']:>6.3f} {row['heldout_top1']:>5.2f} "
                f"{row['ridge_r2']:>5.2f} {row['mlp_cos']:>5.2f}  {', '.join(row['nearest'][:2])}"
            )
        for layer in s["layers"]:
            at = self.table.filter(self.table["layer"] == layer)
            counts = at["verdict"].value_counts(sort=True)
            listed = ", ".join(f"{n} {v}" for v, n in counts.iter_rows())
            lines.append(
                f"layer {layer}: {listed}; mean held-out AUROC {at['heldout_auroc'].mean():.3f}, "
                f"mean top-1 {at['heldout_top1'].mean():.3f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.triage()


def _verdict(pc1: float, r2: float, mlp: float, auc: float) -> str:
    flags = [
        name
        for name, hit in (
            ("redundant", r2 > REDUNDANT_R2),
            ("one-neuron", mlp > ONE_NEURON_COS),
            ("fragmented", pc1 < FRAGMENTED_PC1),
            ("weak", auc < WEAK_AUROC),
        )
        if hit
    ]
    return "+".join(flags) or ("clean" if pc1 >= CLEAN_PC1 else "mixed")


HeldOut = dict[int, tuple[Float[Tensor, "n_test n_concepts"], Bool[Tensor, " n_test"]]]


def project_heldout(
    refit: Readout, acts: CorpusActivations, train: Corpus, test: Corpus
) -> tuple[Bool[Tensor, "n_test n_concepts"], HeldOut]:
    """A readout fitted on `train` scores `test`: (labels in the readout's concept order, {layer: (raw projections,
    top-1 hit)}). A text's top-1 concept is its highest score after z-scoring each concept over the training texts."""
    rows_train, rows_test = acts.rows(train), acts.rows(test)
    order = [test.concepts.index(c) for c in refit.concepts]
    labels = test.labels[:, order]
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for layer in refit.layers:
        rows = refit.vectors[layer]
        fitted = acts.pooled[layer][rows_train] @ rows.T
        raw = acts.pooled[layer][rows_test] @ rows.T
        z = (raw - fitted.mean(0)) / fitted.std(0).clamp(min=1e-12)
        best = z.argmax(1)
        out[layer] = (raw, labels[torch.arange(len(best)), best])
    return labels, out


def heldout_scores(
    readout: Readout, acts: CorpusActivations, corpus: Corpus, heldout: float, seed: int
) -> dict[int, dict[str, tuple[float, float]]]:
    """{layer: {concept: (held-out AUROC, held-out top-1)}} from a readout refitted on the training split."""
    train, test = corpus.split(heldout, seed)
    refit = Readout.fit(acts, train, readout.method, readout.fingerprint)
    labels, per_layer = project_heldout(refit, acts, train, test)
    return {
        layer: {
            c: (auroc(raw[labels[:, j], j], raw[~labels[:, j], j]), float(hit[labels[:, j]].float().mean()))
            for j, c in enumerate(refit.concepts)
        }
        for layer, (raw, hit) in per_layer.items()
    }


def quality(
    readout: Readout,
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    corpus: Corpus,
    heldout: float = 0.3,
    seed: int = 0,
    path: str | Path | None = None,
    show: bool = True,
    batch_size: int = 8,
    acts: CorpusActivations | None = None,
) -> QualityReport:
    """The report (see the module docstring). One capture pass, or none when `acts` are given."""
    import polars as pl

    if set(corpus.concepts) != set(readout.concepts):
        raise SteerhealError(
            f"the corpus's concepts {list(corpus.concepts)} differ from the readout's {readout.concepts}; "
            "pass the corpus it was trained on (corpus.subset(readout.concepts) drops extra concepts)"
        )
    corpus.split(heldout, seed)  # validates frac and sizes before any model work
    readout.check_model(model)
    if acts is None:
        acts = read_corpus(model, tok, corpus, readout.layers, readout.position, batch_size)
    held = heldout_scores(readout, acts, corpus, heldout, seed)
    order = [corpus.concepts.index(c) for c in readout.concepts]
    labels = corpus.labels[:, order]
    rows_all = acts.rows(corpus)
    generator = torch.Generator().manual_seed(seed)
    rows_out, mlp_chance = [], []
    for layer in readout.layers:
        x = acts.pooled[layer][rows_all]
        v = readout.vectors[layer]
        cosines = v @ v.T
        mlp = mlp_write_directions(model, layer)
        mlp = mlp / mlp.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        mlp_cos = (v @ mlp.T).abs()
        random = torch.nn.functional.normalize(torch.randn(N_RANDOM_DIRECTIONS, v.shape[1], generator=generator), dim=1)
        mlp_chance.append(float((random @ mlp.T).abs().max(1).values.median()))
        for j, concept in enumerate(readout.concepts):
            pos, neg = x[labels[:, j]], x[~labels[:, j]]
            offsets = pos - neg.mean(0)
            align = torch.nn.functional.cosine_similarity(offsets, v[j][None], dim=1)
            positive_rows = labels[:, j].nonzero().squeeze(-1)
            worst = align.argsort()[:N_OUTLIERS]
            others = [i for i in range(len(readout.concepts)) if i != j]
            near = sorted(others, key=lambda i: -float(cosines[j, i]))[:N_NEAREST]
            r2, weights = _ridge(v[j], v[others])
            top = weights.abs().argsort(descending=True)[:N_NEAREST]
            pc1 = _pc1_ratio(offsets)
            draws = [torch.randperm(len(neg), generator=generator)[: len(pos)] for _ in range(N_NULL_DRAWS)]
            pc1_null = statistics.median(_pc1_ratio(neg[d] - neg.mean(0)) for d in draws)
            auc, top1 = held[layer][concept]
            best = float(mlp_cos[j].max())
            row: dict[str, Any] = {
                "concept": concept,
                "layer": layer,
                "verdict": _verdict(pc1, r2, best, auc),
                "n_pos": len(pos),
                "pc1_ratio": pc1,
                "pc1_null": pc1_null,
                "align_mean": float(align.mean()),
                "align_min": float(align.min()),
                "outliers": [f"{float(align[i]):.2f} {_source(corpus, int(positive_rows[i]))}" for i in worst],
                "nearest": [f"{readout.concepts[i]} {float(cosines[j, i]):.2f}" for i in near],
                "ridge_r2": r2,
                "ridge_top": [f"{readout.concepts[others[int(i)]]} {float(weights[i]):+.2f}" for i in top],
                "heldout_auroc": auc,
                "heldout_top1": top1,
                "mlp_cos": best,
                "mlp_neuron": int(mlp_cos[j].argmax()),
            }
            if readout.spectra is not None:
                row["spectrum"] = [float(e) for e in readout.spectra[layer][j]]
            rows_out.append(row)
    train, test = corpus.split(heldout, seed)
    k = len(readout.concepts)
    summary = {
        "method": readout.method,
        "position": readout.position,
        "layers": readout.layers,
        "n_concepts": k,
        "n_texts": len(corpus.texts),
        "n_heldout": len(test.texts),
        "n_train": len(train.texts),
        "heldout": heldout,
        "seed": seed,
        "top1_chance": 1 / k,
        "auroc_chance": 0.5,
        "ridge_r2_chance": (k - 1) / readout.hidden_size,
        "mlp_cos_chance": float(torch.tensor(mlp_chance).median()),
        "thresholds": {
            "clean_pc1": CLEAN_PC1,
            "fragmented_pc1": FRAGMENTED_PC1,
            "redundant_r2": REDUNDANT_R2,
            "one_neuron_cos": ONE_NEURON_COS,
            "weak_auroc": WEAK_AUROC,
        },
    }
    report = QualityReport(pl.DataFrame(rows_out), summary)
    if path is not None:
        report.save(path)
    if show:
        print(report.triage())
    return report
