"""A corpus read once: every unique text forwarded a single time at a readout's layers (pooled, or per-text SVD
bases for `subspace`), so that all concepts, all methods and every held-out split are fitted from one pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.read.aggregate import SUBSPACE_RANK, TOKEN_METHODS, text_basis
from steerheal.read.capture import capture, capture_each, check_layers, check_position
from steerheal.read.corpus import Corpus
from steerheal.read.readout_files import READOUT_METHODS


def resolve_position(method: str, position: str | None) -> str:
    """`subspace` reads every token (`all`); the other methods read one pooled vector per text."""
    if method not in READOUT_METHODS:
        raise SteerhealError(f"method={method!r}: use one of {list(READOUT_METHODS)}")
    if method in TOKEN_METHODS:
        if position not in (None, "all"):
            raise SteerhealError(
                f"method={method!r} reads every token of each text: pass position='all' (or leave it None)"
            )
        return "all"
    position = "mean" if position is None else position
    check_position(position)
    return position


def score_position(position: str) -> str:
    """Where a text is scored: the mean of per-token scores is the score of the mean, so `all` → `mean`."""
    return "mean" if position == "all" else position


@dataclass
class CorpusActivations:
    """One capture pass over a corpus's unique texts: pooled activations (and per-text bases for subspace)."""

    texts: tuple[str, ...]
    position: str
    pooled: dict[int, Float[Tensor, "n_texts hidden"]]
    bases: dict[int, list[Tensor]] | None = None

    def rows(self, corpus: Corpus) -> list[int]:
        """Row of each of `corpus.texts` (a subset or split of the corpus these activations were read from)."""
        index = {t: i for i, t in enumerate(self.texts)}
        missing = [t for t in corpus.texts if t not in index]
        if missing:
            raise SteerhealError(f"{len(missing)} corpus texts were not captured, e.g. {missing[0][:60]!r}")
        return [index[t] for t in corpus.texts]


def read_corpus(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    corpus: Corpus,
    layers: Sequence[int],
    position: str,
    batch_size: int = 8,
    progress: bool | None = None,
) -> CorpusActivations:
    """Forward every unique text of the corpus once; `position="all"` also keeps each text's SVD basis."""
    layers = check_layers(model, layers)
    if position != "all":
        pooled = capture(model, tok, list(corpus.texts), layers, position, batch_size, progress, what="corpus")
        return CorpusActivations(corpus.texts, position, pooled)
    each = capture_each(
        model,
        tok,
        list(corpus.texts),
        layers,
        lambda tokens: (tokens.mean(0), text_basis(tokens, SUBSPACE_RANK)),
        batch_size,
        progress,
        what="corpus",
    )
    pooled = {layer: torch.stack([m for m, _ in items]) for layer, items in each.items()}
    bases = {layer: [b for _, b in items] for layer, items in each.items()}
    return CorpusActivations(corpus.texts, position, pooled, bases)
