"""Vector: one concept direction per layer, trained from contrast texts, steered with, saved and loaded.

Directions are unit-norm per layer; the raw norm (the separation of positives from negatives along the
direction) is kept beside each. Steering adds `C · v̂` at every one of the vector's layers, with one
scalar `C = alpha · (coeff if given else v.coeff)`: doses are relative, so a vector carries no default
strength until it is calibrated or given one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.boundary import check_choice, check_meta, checked, safetensors_header
from steerheal.errors import SteerhealError
from steerheal.files import atomic_save_safetensors, atomic_write_json, check_finite, provenance, read_tensor_folder
from steerheal.lm.blocks import n_layers
from steerheal.lm.fingerprint import Fingerprint, fingerprint, warn_if_made_for_another
from steerheal.lm.texts import Text
from steerheal.read.aggregate import METHODS, TOKEN_METHODS, check_method, direction
from steerheal.read.capture import POOLED, capture, check_fits, check_layers, check_position
from steerheal.read.steering import add_to_residual

FORMAT_VERSION = 1
TENSOR_FILE = "vector.safetensors"
META_FILE = "vector.json"
UNIT_TOLERANCE = 1e-4
# vector.json: keys whose annotation admits None may be absent
SCHEMA = {
    "layers": list[int],
    "hidden_size": int,
    "method": str,
    "position": str,
    "coeff": float | None,
    "fingerprint": dict[str, Any] | None,
    "calibration": dict[str, Any] | None,
    "meta": dict[str, Any] | None,
}


def default_layers(model: nn.Module) -> list[int]:
    """The middle third of the blocks, where concepts are most linearly readable in most models."""
    total = n_layers(model)
    return list(range(total // 3, total - total // 3))


@dataclass
class Vector:
    directions: dict[int, Float[Tensor, " hidden"]]
    norms: dict[int, float]
    method: str
    position: str
    coeff: float | None = None
    fingerprint: Fingerprint | None = None
    calibration: dict[str, Any] | None = None  # search history and evaluation count, set by calibrate
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise SteerhealError("a Vector needs at least one layer")
        if set(self.directions) != set(self.norms):
            raise SteerhealError(f"directions at {sorted(self.directions)} but norms at {sorted(self.norms)}")
        sizes = {d.shape for d in self.directions.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise SteerhealError(f"directions must be 1-D and of one hidden size, got shapes {sorted(sizes)}")
        check_finite({f"layer_{k}": v for k, v in self.directions.items()}, "Vector directions")
        check_finite({f"norm_{k}": v for k, v in self.norms.items()}, "Vector norms")
        for layer, d in self.directions.items():
            if abs(float(d.norm()) - 1) > UNIT_TOLERANCE:
                raise SteerhealError(f"direction at layer {layer} has norm {float(d.norm()):.6f}, expected unit")
        self.directions = {k: self.directions[k].float().cpu() for k in sorted(self.directions)}
        self.norms = {k: float(self.norms[k]) for k in sorted(self.norms)}

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def __repr__(self) -> str:
        coeff = "unset" if self.coeff is None else f"{self.coeff:.4g}"
        return f"Vector(method={self.method!r}, position={self.position!r}, layers={self.layers}, coeff={coeff})"

    # ------------------------------------------------------------------ training
    @classmethod
    @checked
    def train(
        cls,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        pos: Sequence[Text],
        neg: Sequence[Text],
        layers: Sequence[int] | None = None,
        method: str = "mean_diff",
        position: str = "last",
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> Vector:
        """Directions from positive and negative texts (one capture pass over their union).

        Texts are raw strings, or `(prompt, completion)` pairs; short contrast pairs read best at
        `last`, templated prompts at `prompt_end`, stories at `mean`. `layers=None`: the middle third.
        """
        if len(pos) == 0 or len(neg) == 0:
            raise SteerhealError(f"Vector.train needs positive and negative texts; got {len(pos)} pos, {len(neg)} neg")
        check_method(method, len(pos), len(neg))
        check_position(position)
        layers = check_layers(model, default_layers(model) if layers is None else layers)
        acts = capture(model, tok, [*pos, *neg], layers, position, batch_size, progress, what="pos+neg")
        directions, norms = {}, {}
        for layer in layers:
            directions[layer], norms[layer] = direction(method, acts[layer][: len(pos)], acts[layer][len(pos) :])
        return cls(
            directions,
            norms,
            method,
            position,
            fingerprint=fingerprint(model),
            meta={"n_pos": len(pos), "n_neg": len(neg)},
        )

    # ------------------------------------------------------------------ dose
    @checked
    def calibrate(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        prompts: Sequence[Text],
        target_kl: float = 1.0,
        stat: str = "p95",
        n_tokens: int = 20,
        tol: float = 0.05,
        sign: int = 1,
        **options: Any,
    ) -> Vector:
        """Set `coeff` to the iso-KL dose (signed by `sign`) and record the search in `calibration`.

        See `steerheal.dose.calibrate.find_dose` for the options (method, batch_size, liveness_samples, seed).
        """
        from steerheal.dose.calibrate import find_dose

        self._check_model(model)
        dose = find_dose(
            model,
            tok,
            prompts,
            lambda C: self(model, C=C),
            self.layers,
            target_kl,
            stat,
            n_tokens,
            tol,
            sign,
            **options,
        )
        self.coeff, self.calibration = dose.coeff, dose.record
        return self

    # ------------------------------------------------------------------ steering and reading
    def _check_model(self, model: nn.Module) -> None:
        check_fits(model, "vector", self.hidden_size, self.layers)

    @checked
    @contextmanager
    def steer(self, model: nn.Module, alpha: float = 1.0, coeff: float | None = None) -> Iterator[None]:
        """Add `alpha · (coeff or v.coeff) · v̂` to the residual stream at the vector's layers."""
        with self(model, C=alpha * self._dose(coeff)):
            yield

    def _dose(self, coeff: float | None) -> float:
        base = coeff if coeff is not None else self.coeff
        if base is None:
            raise SteerhealError(
                "no dose: this vector has no coeff yet. Calibrate it (v.calibrate(...)), set v.coeff, "
                "pass coeff=..., or steer with an absolute strength: with v(model, C=...)"
            )
        return base

    @checked
    def shifts(self, alpha: float = 1.0, coeff: float | None = None) -> dict[int, Float[Tensor, " hidden"]]:
        """{layer: alpha · (coeff or v.coeff) · v̂}: what `steer` adds at each block, as data (a sampler's
        steering request: `read.sampler.Sampler`)."""
        C = alpha * self._dose(coeff)
        if not torch.isfinite(torch.tensor(float(C))):
            raise SteerhealError(f"steering strength C={C} is not finite")
        return {layer: C * d for layer, d in self.directions.items()}

    @checked
    @contextmanager
    def __call__(self, model: nn.Module, C: float) -> Iterator[None]:
        """Steer with an absolute strength C (the same C at every layer of the vector)."""
        if not torch.isfinite(torch.tensor(float(C))):
            raise SteerhealError(f"steering strength C={C} is not finite")
        self._check_model(model)
        with add_to_residual(model, {layer: C * d for layer, d in self.directions.items()}):
            yield

    @checked
    def project(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        texts: Sequence[Text],
        position: str | None = None,
        batch_size: int = 8,
    ) -> Float[Tensor, "n_texts n_layers"]:
        """Concept scores: the residual stream at `position` (default: the vector's) dotted with v̂, per layer."""
        self._check_model(model)
        acts = capture(model, tok, texts, self.layers, position or self.position, batch_size, what="texts")
        return torch.stack([acts[layer] @ self.directions[layer] for layer in self.layers], dim=-1)

    # ------------------------------------------------------------------ files
    @checked
    def save(self, directory: str | Path) -> Path:
        """`vector.safetensors` (unit `layer_<i>`, raw `norms` in layer order) + `vector.json`, atomically."""
        directory = Path(directory)
        tensors = {f"layer_{layer}": d for layer, d in self.directions.items()}
        tensors["norms"] = torch.tensor([self.norms[layer] for layer in self.layers], dtype=torch.float32)
        atomic_save_safetensors(
            directory / TENSOR_FILE,
            tensors,
            # the layer order of `norms`, checked against vector.json on load
            {"format": "steerheal.vector", "format_version": str(FORMAT_VERSION), "layers": str(self.layers)},
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "steerheal.vector",
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "dtype": "float32",
            "method": self.method,
            "position": self.position,
            "coeff": self.coeff,
            "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
            "calibration": self.calibration,
            "meta": self.meta,
            **provenance(),
        }
        atomic_write_json(directory / META_FILE, meta)
        return directory

    @classmethod
    @checked
    def load(cls, directory: str | Path, model: nn.Module | None = None) -> Vector:
        """Read a saved vector; with a model, check it fits (hidden size, layer range, identity warned)."""
        directory = Path(directory)
        what = f"vector at {directory}"
        meta, tensors = read_tensor_folder(directory, META_FILE, TENSOR_FILE, FORMAT_VERSION, what, "Vector.save")
        check_meta(meta, SCHEMA, directory / META_FILE, what, "Vector.save")
        check_choice(meta["method"], (*METHODS, *TOKEN_METHODS), "method", directory / META_FILE, what)
        check_choice(meta["position"], POOLED, "position", directory / META_FILE, what)
        layers = meta["layers"]
        expected = {f"layer_{layer}" for layer in layers} | {"norms"}
        if set(tensors) != expected:
            raise SteerhealError(
                f"{what}: {TENSOR_FILE} holds {sorted(tensors)} but {META_FILE} lists layers {layers}; "
                "the two files do not belong together"
            )
        written = safetensors_header(directory / TENSOR_FILE).get("layers", str(sorted(layers)))
        if layers != sorted(set(layers)) or str(layers) != written:
            raise SteerhealError(
                f"{what}: {META_FILE} lists layers {layers} but {TENSOR_FILE} stores its norms in the order "
                f"{written}; the layer list was edited, so norms would go to the wrong layers: restore {META_FILE}"
            )
        check_finite(tensors, what)
        norms = tensors["norms"]
        if norms.shape != (len(layers),):
            raise SteerhealError(f"{what}: norms has shape {tuple(norms.shape)}, expected ({len(layers)},)")
        fp = meta.get("fingerprint")
        vector = cls(
            directions={layer: tensors[f"layer_{layer}"] for layer in layers},
            norms={layer: float(norms[i]) for i, layer in enumerate(layers)},
            method=meta["method"],
            position=meta["position"],
            coeff=meta.get("coeff"),
            fingerprint=Fingerprint.from_dict(fp, what) if fp else None,
            calibration=meta.get("calibration"),
            meta=meta.get("meta") or {},
        )
        if vector.hidden_size != meta.get("hidden_size"):
            raise SteerhealError(
                f"{what}: tensors have hidden size {vector.hidden_size} but {META_FILE} says {meta.get('hidden_size')}"
            )
        if model is not None:
            vector._check_model(model)
            warn_if_made_for_another(vector.fingerprint, model, what)
        return vector

    # ------------------------------------------------------------------ steering-vectors interop
    def to_steering_vectors(self) -> Any:
        """A `steering_vectors.SteeringVector` with raw magnitudes (unit × norm) at the same block indices."""
        from steering_vectors import SteeringVector

        return SteeringVector({layer: d * self.norms[layer] for layer, d in self.directions.items()}, "decoder_block")

    @classmethod
    @checked
    def from_steering_vectors(cls, sv: Any, method: str = "mean_diff", position: str = "last") -> Vector:
        """Wrap a `steering_vectors.SteeringVector` read at decoder blocks (the same layer convention)."""
        if getattr(sv, "layer_type", None) != "decoder_block":
            raise SteerhealError(
                f"only decoder_block steering vectors map onto steerheal layers; this one is {sv.layer_type!r}"
            )
        raw = {int(layer): t.detach().float().cpu() for layer, t in sv.layer_activations.items()}
        norms = {layer: float(t.norm()) for layer, t in raw.items()}
        if any(n == 0 for n in norms.values()):
            raise SteerhealError("the steering vector has a zero vector at some layer; it has no direction there")
        return cls(
            {layer: t / norms[layer] for layer, t in raw.items()},
            norms,
            method,
            position,
            meta={"source": "steering-vectors"},
        )


# the dataclass constructor's arguments are checked before anything else (BEARTYPE=1's class check included)
Vector.__init__ = checked(Vector.__init__)  # type: ignore[method-assign]
