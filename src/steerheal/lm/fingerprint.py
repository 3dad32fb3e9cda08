"""Fingerprints: which model (identity) and in what precision, recorded in every file steerheal saves."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.lm.blocks import unwrap
from steerheal.log import logger


@dataclass(frozen=True)
class Fingerprint:
    """Which model (identity) and in what precision: recorded in every file steerheal saves.

    Identity mismatches are errors where weights would be misapplied; precision mismatches (a round
    trained on a 4-bit base, baked onto the bf16 base) are warnings.
    """

    name_or_path: str
    revision: str | None
    architecture: str
    hidden_size: int
    n_layers: int
    vocab_size: int
    dtype: str
    quantization: str | None
    # provenance, optional: files written before these fields existed load without them
    gguf_file: str | None = None
    gguf_sha256: str | None = None
    gguf_quant: str | None = None

    IDENTITY = ("name", "revision", "architecture", "hidden_size", "n_layers", "vocab_size")
    PRECISION = ("dtype", "quantization")
    PROVENANCE = ("gguf_file", "gguf_sha256", "gguf_quant")

    @property
    def name(self) -> str:
        """The model's name: a hub id's last part or a local folder's name, so copies compare equal (a model
        loaded from a GGUF is named by its registered identity, whichever route loaded it)."""
        return Path(self.name_or_path.rstrip("/\\")).name if self.name_or_path else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str) -> Fingerprint:
        fields = set(cls.__dataclass_fields__)
        missing = fields - set(data) - set(cls.PROVENANCE)
        if missing:
            raise SteerhealError(f"{what}: fingerprint lacks {sorted(missing)}; the file is damaged or foreign")
        return cls(**{k: data[k] for k in fields if k in data})

    def differences(self, other: Fingerprint, part: Literal["identity", "precision", "provenance"]) -> list[str]:
        """`field: mine != theirs` for each differing field of one part (unknown revisions and provenance never
        differ)."""
        out = []
        fields = {"identity": self.IDENTITY, "precision": self.PRECISION, "provenance": self.PROVENANCE}[part]
        for field in fields:
            mine, theirs = getattr(self, field), getattr(other, field)
            if field in ("revision", *self.PROVENANCE) and (mine is None or theirs is None):
                continue
            if mine != theirs:
                out.append(f"{field}: {mine!r} != {theirs!r}")
        return out


def quantization(model: nn.Module) -> str | None:
    inner = unwrap(model)
    if getattr(inner, "is_loaded_in_4bit", False):
        qc = getattr(inner.config, "quantization_config", None)
        kind = getattr(qc, "bnb_4bit_quant_type", None) if qc is not None else None
        return f"4bit-{kind}" if kind else "4bit"
    if getattr(inner, "is_loaded_in_8bit", False):
        return "8bit"
    return None


@checked
def fingerprint(model: nn.Module) -> Fingerprint:
    inner = unwrap(model)
    config = inner.config
    text = config.get_text_config()
    architectures = getattr(config, "architectures", None) or [type(inner).__name__]
    return Fingerprint(
        # a GGUF's cache folder names the model it holds (lm/gguf_cache.py), not its own path
        name_or_path=str(getattr(config, "steerheal_identity", None) or getattr(config, "_name_or_path", "") or ""),
        revision=getattr(config, "_commit_hash", None),
        architecture=str(architectures[0]),
        hidden_size=int(text.hidden_size),
        n_layers=int(text.num_hidden_layers),
        vocab_size=int(text.vocab_size),
        dtype=str(inner.dtype).removeprefix("torch."),
        quantization=quantization(inner),
        gguf_file=getattr(config, "steerheal_gguf_file", None),
        gguf_sha256=getattr(config, "steerheal_gguf_sha256", None),
        gguf_quant=getattr(config, "steerheal_gguf_quant", None),
    )


def warn_if_made_for_another(saved: Fingerprint | None, model: nn.Module, what: str) -> None:
    """A file read onto a model whose identity differs from the one it was made on: logged, not refused
    (a direction can transfer between revisions of one model; the hidden size and layers are checked)."""
    differences = saved.differences(fingerprint(model), "identity") if saved is not None else []
    if differences:
        logger.warning(f"{what} was trained on another model: {'; '.join(differences)}")
    rounding = saved.differences(fingerprint(model), "provenance") if saved is not None else []
    if rounding and not differences:
        logger.warning(f"{what} was trained on another GGUF file of this model: {'; '.join(rounding)}")
