"""Readout: many concepts' directions at once, trained from one capture pass over a corpus, in the file
format a serving-side readout loads.

`Readout.train` forwards every unique text of the corpus once, at the readout's layers, and fits each
concept's direction from those activations: positives are the concept's texts, negatives every other text
(`corpus.py`); the capture pass is `corpus_activations.py`. Methods are `Vector`'s (`mean_diff`, `pca`,
`logistic`, `logistic_l1`) plus `subspace` (`aggregate.py`), which reads every token (`position="all"`) and
keeps each concept's eigen-spectrum. `pca` reads pairs: on a corpus, pair k (for k < max(P, N)) is (positive k
mod P, negative k mod N), so every positive and every negative is used.

Files: `readout.safetensors` holds, per layer, `layer_<i>.vectors` `(n_concepts, hidden)` (unit rows in
concept order) and `layer_<i>.norms` `(n_concepts,)` (the separation along each row), plus
`layer_<i>.spectrum` `(n_concepts, 8)` for `subspace`; `readout.json` holds `concepts, layers,
hidden_size, dtype` (of the stored tensors), `format_version, method, position, fingerprint` and
provenance. Both are written atomically and checked against each other (and a model) on load.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.files import atomic_save_safetensors, atomic_write_json, check_finite, provenance, read_tensor_folder
from steerheal.lm.fingerprint import Fingerprint, fingerprint, warn_if_made_for_another
from steerheal.lm.texts import Text
from steerheal.read.aggregate import (
    MIN_PER_SIDE_FOR_CV,
    SUBSPACE_K,
    SUBSPACE_RANK,
    TOKEN_METHODS,
    check_separation,
    direction,
    subspace,
)
from steerheal.read.capture import capture, check_fits, check_layers
from steerheal.read.corpus import NAME, Corpus
from steerheal.read.corpus_activations import CorpusActivations, read_corpus, resolve_position, score_position
from steerheal.read.readout_files import (
    FORMAT_VERSION,
    META_FILE,
    STORED_DTYPES,
    TENSOR_FILE,
    check_saved,
)
from steerheal.read.vector import Vector, default_layers

if TYPE_CHECKING:
    from steerheal.read.monitor import Trace
    from steerheal.read.quality import QualityReport


def _round_robin(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs k < max(P, N): (positive k mod P, negative k mod N), so every text of both sets is used."""
    k = torch.arange(max(len(pos), len(neg)))
    return pos[k % len(pos)], neg[k % len(neg)]


@dataclass
class Readout:
    concepts: Sequence[str]
    vectors: dict[int, Float[Tensor, "n_concepts hidden"]]
    norms: dict[int, Float[Tensor, " n_concepts"]]
    method: str
    position: str
    fingerprint: Fingerprint | None = None
    spectra: dict[int, Float[Tensor, "n_concepts spectrum"]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.concepts = list(self.concepts)
        if not self.concepts:
            raise SteerhealError("a Readout needs at least one concept")
        bad = [c for c in self.concepts if not isinstance(c, str) or not NAME.fullmatch(c)]
        if bad or len(set(self.concepts)) != len(self.concepts):
            raise SteerhealError(f"concepts must be unique plain identifiers; got {self.concepts}")
        if not self.vectors:
            raise SteerhealError("a Readout needs at least one layer")
        if set(self.vectors) != set(self.norms) or (
            self.spectra is not None and set(self.spectra) != set(self.vectors)
        ):
            raise SteerhealError(f"vectors at layers {sorted(self.vectors)} but norms at {sorted(self.norms)}")
        k = len(self.concepts)
        sizes = {tuple(v.shape) for v in self.vectors.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 2 or next(iter(sizes))[0] != k:
            raise SteerhealError(f"vectors must be ({k}, hidden) at every layer, got shapes {sorted(sizes)}")
        for layer in self.vectors:
            if tuple(self.norms[layer].shape) != (k,):
                raise SteerhealError(f"norms at layer {layer} have shape {tuple(self.norms[layer].shape)}, not ({k},)")
        self.vectors = {i: self.vectors[i].float().cpu().contiguous() for i in sorted(self.vectors)}
        self.norms = {i: self.norms[i].float().cpu() for i in sorted(self.norms)}
        if self.spectra is not None:
            self.spectra = {i: self.spectra[i].float().cpu() for i in sorted(self.spectra)}
        check_finite({f"layer_{i}.vectors": v for i, v in self.vectors.items()}, "Readout")
        check_finite({f"layer_{i}.norms": v for i, v in self.norms.items()}, "Readout")

    # ------------------------------------------------------------------ basics
    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).shape[1])

    def __len__(self) -> int:
        return len(self.concepts)

    def __contains__(self, concept: object) -> bool:
        return concept in self.concepts

    def __repr__(self) -> str:
        return (
            f"Readout({len(self.concepts)} concepts, method={self.method!r}, position={self.position!r}, "
            f"layers={self.layers})"
        )

    @checked
    def __getitem__(self, concept: str) -> Vector:
        """One concept as a `Vector` (its position is where texts are scored: `all` reads as `mean`)."""
        if concept not in self.concepts:
            raise SteerhealError(f"concept {concept!r} is not in this readout; it has {self.concepts}")
        j = self.concepts.index(concept)
        return Vector(
            {layer: v[j] for layer, v in self.vectors.items()},
            {layer: float(n[j]) for layer, n in self.norms.items()},
            self.method,
            score_position(self.position),
            fingerprint=self.fingerprint,
            meta={"concept": concept, "readout_position": self.position},
        )

    # ------------------------------------------------------------------ training
    @classmethod
    @checked
    def train(
        cls,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        corpus: Corpus,
        layers: Sequence[int] | None = None,
        method: str = "mean_diff",
        position: str | None = None,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> Readout:
        """Every concept's direction per layer from one capture pass over the corpus's unique texts.

        `position=None` is `mean` (over content tokens: stories are read inside their content, never at
        closing tokens every text shares) for the pooled methods and `all` for `subspace`.
        """
        if not isinstance(corpus, Corpus):
            raise SteerhealError(f"Readout.train needs a steerheal Corpus (Corpus.load(dir)), got {type(corpus)}")
        position = resolve_position(method, position)
        layers = check_layers(model, default_layers(model) if layers is None else layers)
        _check_sizes(corpus, method)
        acts = read_corpus(model, tok, corpus, layers, position, batch_size, progress)
        return cls.fit(acts, corpus, method, fingerprint(model))

    @classmethod
    @checked
    def fit(
        cls,
        acts: CorpusActivations,
        corpus: Corpus,
        method: str,
        fingerprint: Fingerprint | None = None,
        k: int = SUBSPACE_K,
    ) -> Readout:
        """Directions from activations already read (`read_corpus`) for `corpus` or a subset/split of it."""
        resolve_position(method, acts.position)
        _check_sizes(corpus, method)
        if method in TOKEN_METHODS and acts.bases is None:
            raise SteerhealError("the subspace method needs per-text bases: read the corpus with position='all'")
        rows = torch.tensor(acts.rows(corpus))
        labels = corpus.labels
        vectors, norms, spectra = {}, {}, {}
        for layer, pooled in acts.pooled.items():
            x = pooled[rows]
            bases = [acts.bases[layer][int(r)] for r in rows] if acts.bases is not None else []
            units, seps, specs = [], [], []
            for j in range(len(corpus.concepts)):
                pos, neg = x[labels[:, j]], x[~labels[:, j]]
                try:
                    if method in TOKEN_METHODS:
                        pick = labels[:, j].tolist()
                        unit, _, spectrum = subspace(
                            [b for b, p in zip(bases, pick, strict=True) if p],
                            [b for b, p in zip(bases, pick, strict=True) if not p],
                            pos,
                            neg,
                            k,
                        )
                        specs.append(spectrum)
                    else:
                        unit, _ = direction(method, *(_round_robin(pos, neg) if method == "pca" else (pos, neg)))
                    separation = float(pos.mean(0) @ unit - neg.mean(0) @ unit)  # over the sets, not the pairs
                    if separation < 0:
                        unit, separation = -unit, -separation
                    check_separation(method, separation, pos, neg)
                except SteerhealError as err:
                    raise SteerhealError(f"concept {corpus.concepts[j]!r} at layer {layer}: {err}") from err
                units.append(unit)
                seps.append(separation)
            vectors[layer], norms[layer] = torch.stack(units), torch.tensor(seps)
            if specs:
                spectra[layer] = torch.stack(specs)
        counts = corpus.counts()
        return cls(
            list(corpus.concepts),
            vectors,
            norms,
            method,
            acts.position,
            fingerprint=fingerprint,
            spectra=spectra or None,
            meta={
                "n_texts": len(corpus.texts),
                "positives": counts,
                "corpus": str(corpus.root),
                **({"subspace_rank": SUBSPACE_RANK, "subspace_k": k} if method in TOKEN_METHODS else {}),
            },
        )

    # ------------------------------------------------------------------ reading
    @checked
    def check_model(self, model: nn.Module) -> None:
        check_fits(model, "readout", self.hidden_size, self.layers)

    @checked
    def score(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        texts: Sequence[Text],
        position: str | None = None,
        batch_size: int = 8,
    ) -> Float[Tensor, "n_texts n_layers n_concepts"]:
        """Concept scores of texts: the residual stream at `position` (default: the readout's, `all` → `mean`)
        dotted with each unit row, per layer."""
        self.check_model(model)
        where = score_position(self.position) if position is None else position
        acts = capture(model, tok, texts, self.layers, where, batch_size, what="texts")
        return torch.stack([acts[layer] @ self.vectors[layer].T for layer in self.layers], dim=1)

    @checked
    @contextmanager
    def monitor(self, model: nn.Module) -> Iterator[Trace]:
        """Record concept scores at every position the model processes inside the block (`monitor.py`)."""
        from steerheal.read.monitor import monitor

        with monitor(self, model) as trace:
            yield trace

    @checked
    def quality(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        corpus: Corpus,
        heldout: float = 0.3,
        seed: int = 0,
        path: str | Path | None = None,
        show: bool = True,
        batch_size: int = 8,
    ) -> QualityReport:
        """Per-concept quality figures and a triage (`quality.py`); JSON written to `path` when given."""
        from steerheal.read.quality import quality

        return quality(self, model, tok, corpus, heldout, seed, path, show, batch_size)

    # ------------------------------------------------------------------ files
    @checked
    def save(self, directory: str | Path, dtype: str = "float32") -> Path:
        """`readout.safetensors` + `readout.json`, atomically. `dtype` is that of the stored tensors."""
        if dtype not in STORED_DTYPES:
            raise SteerhealError(f"dtype={dtype!r}: use one of {list(STORED_DTYPES)}")
        directory = Path(directory)
        torch_dtype = STORED_DTYPES[dtype]
        tensors: dict[str, Tensor] = {}
        for layer in self.layers:
            tensors[f"layer_{layer}.vectors"] = self.vectors[layer].to(torch_dtype)
            tensors[f"layer_{layer}.norms"] = self.norms[layer].to(torch_dtype)
            if self.spectra is not None:
                tensors[f"layer_{layer}.spectrum"] = self.spectra[layer].to(torch_dtype)
        atomic_save_safetensors(
            directory / TENSOR_FILE,
            tensors,
            # the concept of each row, checked against readout.json on load
            {"format": "steerheal.readout", "format_version": str(FORMAT_VERSION), "concepts": str(self.concepts)},
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "steerheal.readout",
            "concepts": self.concepts,
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "dtype": dtype,
            "method": self.method,
            "position": self.position,
            "spectrum": self.spectra is not None,
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
            "meta": self.meta,
            **provenance(),
        }
        atomic_write_json(directory / META_FILE, meta)
        return directory

    @classmethod
    @checked
    def load(cls, directory: str | Path, model: nn.Module | None = None) -> Readout:
        """Read a saved readout, checking the two files against each other and, given one, the model."""
        directory = Path(directory)
        what = f"readout at {directory}"
        meta, tensors = read_tensor_folder(directory, META_FILE, TENSOR_FILE, FORMAT_VERSION, what, "Readout.save")
        check_saved(directory, meta, tensors, what)
        concepts, layers = meta["concepts"], meta["layers"]
        fp = meta.get("fingerprint")
        readout = cls(
            concepts,
            {layer: tensors[f"layer_{layer}.vectors"].float() for layer in layers},
            {layer: tensors[f"layer_{layer}.norms"].float() for layer in layers},
            str(meta["method"]),
            str(meta["position"]),
            fingerprint=Fingerprint.from_dict(fp, what) if fp else None,
            spectra={layer: tensors[f"layer_{layer}.spectrum"].float() for layer in layers}
            if meta.get("spectrum")
            else None,
            meta=meta.get("meta") or {},
        )
        if model is not None:
            readout.check_model(model)
            warn_if_made_for_another(readout.fingerprint, model, what)
        return readout


Readout.__init__ = checked(Readout.__init__)  # type: ignore[method-assign] (arguments checked first, as Vector's)


def _check_sizes(corpus: Corpus, method: str) -> None:
    """Methods with cross-validation need texts on each side of every concept (checked before any forward)."""
    if not method.startswith("logistic"):
        return
    for concept, n in corpus.counts().items():
        if min(n, len(corpus.texts) - n) < MIN_PER_SIDE_FOR_CV:
            raise SteerhealError(
                f"method={method!r} picks its penalty by 3-fold cross-validation and needs at least "
                f"{MIN_PER_SIDE_FOR_CV} texts on "
                f"each side; concept {concept!r} has {n} positives and {len(corpus.texts) - n} negatives. "
                "Add texts or use mean_diff"
            )
