"""A readout's layer and method chosen without the held-out texts, and how far one concept's AUROC can be trusted.

- `choose(acts, train, layers, methods)`: nested selection on the training part of an outer split. The
  training part is split again (`train.split(heldout, seed)` for each inner seed); each candidate readout is
  fitted on an inner training part and scored on its inner held-out part, and the score of a candidate is
  its held-out AUROC averaged over concepts and inner splits. With `layer_method` (default `mean_diff`, which
  costs nothing to fit) the choice has two stages: the layer is the best layer of `layer_method`, then the
  method is the best of `methods` at that layer; the cross-validated logistic fits are then paid at one layer,
  not at every one. With `layer_method=None` every (layer, method) pair is scored and the best pair is taken.
  Ties go to the earlier layer, then the earlier method. A candidate whose fit fails on an inner split (a
  `SteerhealError`, e.g. too few texts for logistic's folds) is left out and named in `failed`.
- `bootstrap_auroc(pos, neg)`: a percentile interval for one concept's held-out AUROC averaged over outer
  splits. Each replicate resamples, in every split, the held-out positives and the held-out negatives with
  replacement (stratified: each class keeps its size) and averages the splits' AUROCs. It covers the
  sampling of held-out texts, not the refitting of the readout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.read.aggregate import TOKEN_METHODS
from steerheal.read.corpus import Corpus
from steerheal.read.corpus_activations import CorpusActivations
from steerheal.read.quality import auroc, project_heldout
from steerheal.read.readout import Readout
from steerheal.read.readout_files import READOUT_METHODS

INNER_HELDOUT = 0.3
INNER_SEEDS = (1000, 1001)  # not the outer splits' seeds (0, 1, 2, ...), though the texts differ anyway
N_BOOT = 2000
LEVEL = 0.95


@dataclass
class Choice:
    """The chosen layer and method; `scores` holds every candidate's mean inner held-out AUROC."""

    layer: int
    method: str
    scores: dict[tuple[int, str], float]
    failed: list[str] = field(default_factory=list)

    def profile(self, method: str) -> dict[int, float]:
        """{layer: mean inner AUROC} of one method over the layers it was scored at."""
        return {layer: s for (layer, m), s in self.scores.items() if m == method}


def view(acts: CorpusActivations, method: str, layers: Sequence[int]) -> CorpusActivations:
    """The activations a method fits from, at `layers`: per-text bases for `subspace`, pooled means otherwise."""
    missing = [layer for layer in layers if layer not in acts.pooled]
    if missing:
        raise SteerhealError(f"layers {missing} were not read: read_corpus at {sorted(acts.pooled)} holds them")
    pooled = {layer: acts.pooled[layer] for layer in layers}
    if method in TOKEN_METHODS:
        if acts.bases is None:
            raise SteerhealError(f"method {method!r} needs per-text bases: read the corpus with position='all'")
        return CorpusActivations(acts.texts, acts.position, pooled, {layer: acts.bases[layer] for layer in layers})
    return CorpusActivations(acts.texts, "mean" if acts.position == "all" else acts.position, pooled)


def inner_auroc(
    acts: CorpusActivations, corpus: Corpus, method: str, layers: Sequence[int], heldout: float, seeds: Sequence[int]
) -> dict[int, float]:
    """{layer: held-out AUROC of `method` averaged over concepts and the splits `corpus.split(heldout, seed)`}."""
    source = view(acts, method, layers)
    totals = dict.fromkeys(layers, 0.0)
    for seed in seeds:
        train, test = corpus.split(heldout, seed)
        labels, per_layer = project_heldout(Readout.fit(source, train, method), source, train, test)
        for layer, (raw, _) in per_layer.items():
            aucs = [auroc(raw[labels[:, j], j], raw[~labels[:, j], j]) for j in range(labels.shape[1])]
            totals[layer] += sum(aucs) / len(aucs)
    return {layer: total / len(seeds) for layer, total in totals.items()}


@checked
def choose(
    acts: CorpusActivations,
    train: Corpus,
    layers: Sequence[int],
    methods: Sequence[str],
    layer_method: str | None = "mean_diff",
    heldout: float = INNER_HELDOUT,
    seeds: Sequence[int] = INNER_SEEDS,
) -> Choice:
    """Layer and method chosen on inner splits of `train` only (see the module docstring)."""
    unknown = [m for m in [*methods, *([layer_method] if layer_method else [])] if m not in READOUT_METHODS]
    if unknown:
        raise SteerhealError(f"choose: methods {unknown} are not readout methods; use {list(READOUT_METHODS)}")
    if not layers or not methods or not seeds:
        raise SteerhealError("choose: give at least one layer, one method and one inner seed")
    scores: dict[tuple[int, str], float] = {}
    failed: list[str] = []

    def score(method: str, at: Sequence[int]) -> None:
        try:
            for layer, s in inner_auroc(acts, train, method, at, heldout, seeds).items():
                scores[(layer, method)] = s
        except SteerhealError as err:  # this candidate cannot be fitted here: left out, and said so
            failed.append(f"{method} at layers {list(at)}: {err}")

    if layer_method is not None:
        score(layer_method, layers)
        if not scores:
            raise SteerhealError(f"choose: {layer_method} could not be fitted at any layer: {failed}")
        layer = max(layers, key=lambda at: scores.get((at, layer_method), float("-inf")))
        for method in methods:
            if (layer, method) not in scores:
                score(method, [layer])
    else:
        for method in methods:
            score(method, layers)
    candidates = [(layer, m) for layer in layers for m in methods if (layer, m) in scores]
    if not candidates:
        raise SteerhealError(f"choose: no method could be fitted on the inner splits: {failed}")
    best = max(candidates, key=lambda c: scores[c])  # max keeps the first of equal scores
    return Choice(best[0], best[1], scores, failed)


def _counts(n: int, n_boot: int, generator: torch.Generator) -> Float[Tensor, "n_boot n"]:
    """How often each of n items is drawn in each of n_boot resamples of size n with replacement."""
    draws = torch.randint(n, (n_boot, n), generator=generator)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, n, dtype=torch.float64)
    )


@checked
def bootstrap_auroc(
    pos: Sequence[Float[Tensor, " _n_pos"]],  # sizes differ between splits
    neg: Sequence[Float[Tensor, " _n_neg"]],
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) percentile interval of the AUROC averaged over splits; `pos[i]`, `neg[i]` are split i's
    held-out scores of the concept's positives and negatives."""
    if len(pos) != len(neg) or not pos:
        raise SteerhealError(f"bootstrap_auroc: give one (pos, neg) pair per split, got {len(pos)} and {len(neg)}")
    if any(len(p) == 0 for p in pos) or any(len(n) == 0 for n in neg):
        raise SteerhealError("bootstrap_auroc: every split needs at least one positive and one negative score")
    if not 0 < level < 1 or n_boot < 1:
        raise SteerhealError(f"bootstrap_auroc: level={level} must be in (0, 1) and n_boot={n_boot} at least 1")
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(n_boot, dtype=torch.float64)
    for p, n in zip(pos, neg, strict=True):
        # a replicate is how often it drew each text: AUROC = Σ_ij count_i · count_j · win_ij / (n_pos · n_neg)
        p, n = p.double(), n.double()
        win = (p[:, None] > n[None, :]).double() + 0.5 * (p[:, None] == n[None, :]).double()
        drawn_pos, drawn_neg = _counts(len(p), n_boot, generator), _counts(len(n), n_boot, generator)
        total += einsum(drawn_pos @ win, drawn_neg, "boot neg, boot neg -> boot") / (len(p) * len(n))
    total /= len(pos)
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(total, tails).tolist()
    return low, high
