"""Open a readout folder whether steerheal wrote it or another tool did, so any serving-format readout can be
distilled.

A foreign readout is the serving format without steerheal's additions: `readout.safetensors` with
`layer_<i>.vectors` `(n_concepts, hidden)` (and optionally `layer_<i>.norms`), and `readout.json` with only
`concepts, layers, hidden_size, dtype`. It has no fingerprint, so nothing says which model it was made for
beyond its hidden size: the caller checks that and warns. Its method is unknown (`method="unknown"`) and its
rows are read at `mean`; rows that are not unit are normalised and their lengths kept as norms.
"""

from __future__ import annotations

from pathlib import Path

from steerheal.boundary import check_meta
from steerheal.errors import SteerhealError
from steerheal.files import check_finite, load_safetensors, read_json
from steerheal.read.readout import Readout
from steerheal.read.readout_files import META_FILE, TENSOR_FILE

FOREIGN_SCHEMA = {"concepts": list[str], "layers": list[int], "hidden_size": int, "dtype": str}
UNKNOWN_METHOD = "unknown"


def is_foreign(directory: Path) -> bool:
    """True when readout.json was not written by steerheal (no `kind` / `format_version`)."""
    meta = read_json(Path(directory) / META_FILE, f"readout at {directory}")
    return "kind" not in meta and "format_version" not in meta


def open_readout(directory: str | Path) -> tuple[Readout, bool]:
    """(readout, foreign): steerheal's own files through `Readout.load`, a foreign tool's through the
    serving-format checks here."""
    directory = Path(directory)
    what = f"readout at {directory}"
    if not directory.is_dir():
        raise SteerhealError(f"{what}: no such folder (expected {META_FILE} and {TENSOR_FILE})")
    if not is_foreign(directory):
        return Readout.load(directory), False
    meta = read_json(directory / META_FILE, what)
    saver = "the tool that wrote it"
    check_meta(meta, FOREIGN_SCHEMA, directory / META_FILE, what, saver)
    tensors = load_safetensors(directory / TENSOR_FILE, what, "it was not written completely")
    concepts, layers, hidden = meta["concepts"], meta["layers"], meta["hidden_size"]
    vectors, norms = {}, {}
    for layer in layers:
        name = f"layer_{layer}.vectors"
        if name not in tensors:
            raise SteerhealError(f"{what}: {TENSOR_FILE} lacks {name} but {META_FILE} lists layer {layer}")
        rows = tensors[name].float()
        if tuple(rows.shape) != (len(concepts), hidden):
            raise SteerhealError(
                f"{what}: {name} has shape {tuple(rows.shape)}, but {META_FILE} lists {len(concepts)} concepts and "
                f"hidden size {hidden}: expected {(len(concepts), hidden)}"
            )
        check_finite({name: rows}, what)
        lengths = rows.norm(dim=-1)
        if bool((lengths == 0).any()):
            raise SteerhealError(f"{what}: {name} has a zero row; a concept has no direction there")
        vectors[layer] = rows / lengths[:, None]
        stored = tensors.get(f"layer_{layer}.norms")
        norms[layer] = stored.float() if stored is not None else lengths
    readout = Readout(
        concepts,
        vectors,
        norms,
        UNKNOWN_METHOD,
        "mean",
        meta={"foreign": True},
    )
    return readout, True
