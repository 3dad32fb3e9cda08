"""readout.json and readout.safetensors checked against each other and a schema before a Readout is built.

Every message names the folder and the file. `readout.safetensors` records its rows' concepts in its header
(since issue 15), so a reordered or renamed `concepts` list in readout.json is caught; files written before
that have no such header and load as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from steerheal.boundary import check_choice, check_meta, safetensors_header
from steerheal.errors import SteerhealError
from steerheal.files import check_finite
from steerheal.read.aggregate import METHODS, TOKEN_METHODS
from steerheal.read.capture import POOLED

FORMAT_VERSION = 1
TENSOR_FILE = "readout.safetensors"
META_FILE = "readout.json"
READOUT_METHODS: tuple[str, ...] = (*METHODS, *TOKEN_METHODS)
STORED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# a unit row rounded to the stored dtype is unit to about its precision times sqrt(hidden)
UNIT_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
SCHEMA = {  # readout.json: keys whose annotation admits None may be absent
    **{"concepts": list[str], "layers": list[int], "hidden_size": int, "dtype": str, "method": str},
    **{"position": str, "spectrum": bool | None, "fingerprint": dict[str, Any] | None, "meta": dict[str, Any] | None},
}


def check_saved(directory: Path, meta: dict[str, Any], tensors: dict[str, Tensor], what: str) -> None:
    """The metadata's schema and values, the tensors' names, dtypes and shapes against it, finite unit rows."""
    check_meta(meta, SCHEMA, directory / META_FILE, what, "Readout.save")
    check_choice(meta["dtype"], list(STORED_DTYPES), "dtype", directory / META_FILE, what)
    check_choice(meta["method"], READOUT_METHODS, "method", directory / META_FILE, what)
    positions = ("all",) if meta["method"] in TOKEN_METHODS else POOLED
    check_choice(meta["position"], positions, "position", directory / META_FILE, what)
    dtype, concepts, layers = meta["dtype"], meta["concepts"], meta["layers"]
    written = safetensors_header(directory / TENSOR_FILE).get("concepts", str(concepts))
    if str(concepts) != written:
        raise SteerhealError(
            f"{what}: {META_FILE} lists concepts {concepts} but the rows of {TENSOR_FILE} are {written}; the "
            f"concept list was edited, so rows would be read under other names: restore {META_FILE}"
        )
    parts = ["vectors", "norms", *(["spectrum"] if meta.get("spectrum") else [])]
    expected = {f"layer_{layer}.{part}" for layer in layers for part in parts}
    if set(tensors) != expected:
        raise SteerhealError(
            f"{what}: {TENSOR_FILE} holds {sorted(tensors)} but {META_FILE} lists layers {layers} "
            f"(expecting {sorted(expected)}); the two files do not belong together"
        )
    hidden = meta["hidden_size"]
    for name, tensor in tensors.items():
        if tensor.dtype != STORED_DTYPES[dtype]:
            raise SteerhealError(f"{what}: {name} is stored as {tensor.dtype} but {META_FILE} says {dtype}")
        want = (len(concepts), hidden) if name.endswith(".vectors") else (len(concepts),)
        if name.endswith(".vectors") or name.endswith(".norms"):
            if tuple(tensor.shape) != want:
                raise SteerhealError(
                    f"{what}: {name} has shape {tuple(tensor.shape)}, but {META_FILE} lists "
                    f"{len(concepts)} concepts and hidden size {hidden}: expected {want}"
                )
        elif tensor.ndim != 2 or tensor.shape[0] != len(concepts):
            raise SteerhealError(f"{what}: {name} has shape {tuple(tensor.shape)}, expected ({len(concepts)}, k)")
    check_finite(tensors, what)
    for layer in layers:
        lengths = tensors[f"layer_{layer}.vectors"].float().norm(dim=-1)
        worst = float((lengths - 1).abs().max())
        if worst > UNIT_TOLERANCE[dtype]:
            raise SteerhealError(
                f"{what}: layer_{layer}.vectors rows are not unit vectors (a row's norm is off by {worst:.3g}); "
                "the readout format stores unit rows, with the magnitudes in layer_<i>.norms"
            )
