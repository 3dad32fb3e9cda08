"""GatedLoRA's files, as peft's `utils/save_and_load.py` is peft's: each round in peft's own format and
`gated.json` (rounds, gates, targets, fingerprint, provenance), written last so that a save is complete only
when it exists; loading checks every file against the model before any model work."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from steerheal.adapter.peft_files import lora_keys, read_config, read_weights, write_adapter
from steerheal.adapter.round import Round, check_rank, group_prefix
from steerheal.adapter.targets import check_band, check_unadapted, linear_kind
from steerheal.boundary import check_meta
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, provenance, read_json
from steerheal.lm.blocks import unwrap
from steerheal.lm.fingerprint import Fingerprint, fingerprint
from steerheal.log import logger, quiet_bitsandbytes

if TYPE_CHECKING:
    from steerheal.adapter.gated import GatedLoRA

FORMAT_VERSION = 1
META_FILE = "gated.json"
SCHEMA = {  # gated.json: keys whose annotation admits None may be absent
    **{"r": int, "alpha": float, "target_modules": list[str] | None, "target_names": list[str], "seed": int},
    **{"depth_band": list[float], "fan_in_fan_out": bool, "history": list[dict[str, Any]] | None},
    **{"current": dict[str, Any] | None, "fingerprint": dict[str, Any] | None},
}
KIND = "steerheal.gated_lora"


def save_rounds(adapter: GatedLoRA, directory: str | Path) -> Path:
    """Each round in peft's format (`<dir>/<round>/`), then `gated.json` last: a save is complete only
    when `gated.json` exists. Round folders of an earlier save that are no longer rounds are removed."""
    with quiet_bitsandbytes():  # peft imports bitsandbytes
        from peft.utils import get_peft_model_state_dict

    directory = Path(directory)
    meta_path = directory / META_FILE
    stale: set[str] = set()
    if meta_path.is_file():
        old = read_json(meta_path, f"earlier GatedLoRA save at {directory}")
        stale = {r.get("name") for r in [*old.get("history", []), old.get("current") or {}] if isinstance(r, dict)}
        meta_path.unlink()
    for rnd in adapter.rounds:
        # save_embedding_layers=False: no embedding is ever targeted, and "auto" asks the hub (with retries)
        key = adapter.key(rnd)
        state = get_peft_model_state_dict(adapter.peft_model, adapter_name=key, save_embedding_layers=False)
        expected = {key for module in adapter.target_names for key in lora_keys(module)}
        if set(state) != expected:  # load reads these keys back: refuse to write what it could not read
            raise SteerhealError(
                f"save: peft named {rnd.name}'s tensors {sorted(set(state) ^ expected)[:4]} unlike the "
                "'base_model.model.<module>.lora_A.weight' layout steerheal reads; this peft version is unsupported"
            )
        write_adapter(directory / rnd.name, adapter.peft_model.peft_config[key], state)
    for name in sorted(stale - {r.name for r in adapter.rounds} - {None}):
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            (directory / name / file).unlink(missing_ok=True)
        if (directory / name).is_dir() and not any((directory / name).iterdir()):
            (directory / name).rmdir()
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "r": adapter.r,
        "alpha": adapter.alpha,
        "target_modules": adapter.target_modules,
        "target_names": adapter.target_names,
        "depth_band": list(adapter.depth_band),
        "fan_in_fan_out": adapter.fan_in_fan_out,
        "seed": adapter.seed,
        "history": [asdict(r) for r in adapter.history],
        "current": asdict(adapter.current) if adapter.current else None,
        "fingerprint": adapter.fingerprint.to_dict(),
        **provenance(),
    }
    atomic_write_json(meta_path, meta)
    return directory


def load_rounds(
    cls: type[GatedLoRA], model: nn.Module, directory: str | Path, bank: Any = None, concept: str | None = None
) -> GatedLoRA:
    """Attach the rounds saved in `directory` to `model` (in place), gates and all.

    The base must be the model they were trained on: an identity difference (name, architecture,
    sizes) is an error; a precision difference (a 4-bit base against a bf16 one) is a logged warning.
    With `bank` (bank.py) the rounds join its groups as `concept` on the one peft model: the model may
    carry that bank's adapters, and the targets must be those of its other groups.
    """
    directory = Path(directory)
    what = f"GatedLoRA at {directory}"
    meta = read_json(directory / META_FILE, what)
    if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != KIND:
        raise SteerhealError(
            f"{what}: kind {meta.get('kind')!r} version {meta.get('format_version')!r} is not a GatedLoRA save "
            f"this steerheal reads ({KIND} version {FORMAT_VERSION})"
        )
    check_meta(meta, SCHEMA, directory / META_FILE, what, "GatedLoRA.save")
    saved_fp = Fingerprint.from_dict(meta.get("fingerprint") or {}, what)
    mine = fingerprint(model)
    identity = saved_fp.differences(mine, "identity")
    if identity:
        raise SteerhealError(
            f"{what} was trained on another model than this one ({'; '.join(identity)}); load it onto its own "
            "base model"
        )
    # another GGUF rounding of the same model is a difference of precision, not of identity
    precision = saved_fp.differences(mine, "precision") + saved_fp.differences(mine, "provenance")
    if precision:
        logger.warning(f"{what} was trained on the same model in another precision: {'; '.join(precision)}")
    first = next(iter(bank.views.values()), None) if bank is not None else None
    if first is None:
        check_unadapted(model)
    inner = unwrap(model)
    names = [str(n) for n in meta.get("target_names") or []]
    # a bank's later groups land on the first group's (already adapted) layers: their names are compared below
    kinds = (
        {linear_kind(inner.get_submodule(n)) if _has_module(inner, n) else None for n in names} if not first else {1}
    )
    if not names or None in kinds:
        raise SteerhealError(f"{what}: its target modules are not linear layers of this model; the file is damaged")
    history = [Round.from_dict(r, what) for r in meta.get("history") or []]
    current = Round.from_dict(meta.get("current"), what)
    r = check_rank(int(meta["r"]), f"{what}: r")
    handle = cls(
        model,
        r,
        float(meta["alpha"]),
        meta.get("target_modules"),
        check_band(meta["depth_band"]),
        names,
        bool(meta["fan_in_fan_out"]),
        int(meta["seed"]),
    )
    if first is not None:
        if names != first.target_names or handle.r != first.r:
            raise SteerhealError(
                f"{what}: its targets or rank differ from the bank's other concepts (r={first.r}); a bank's concepts "
                "are trained with one adapter configuration"
            )
        handle.fingerprint, handle.peft_model = first.fingerprint, first.peft_model
    handle.prefix, handle.bank = group_prefix(concept), bank
    rounds = [*history, current]
    weights = [_read_round(handle, directory / rnd.name, rnd, f"{what}, round {rnd.name}") for rnd in rounds]
    if bank is not None:
        bank.views[str(concept)] = handle
    for rnd, factors in zip(rounds, weights, strict=True):  # every file read and checked before model work
        if rnd is current:
            handle.current = rnd
        else:
            handle.history.append(rnd)
        handle._add_adapter(rnd, factors)
    logger.info(f"loaded {handle!r} from {directory}")
    return handle


def _read_round(adapter: GatedLoRA, folder: Path, rnd: Round, what: str) -> dict[str, tuple[Tensor, Tensor]]:
    config = read_config(folder, what)
    if config.get("r") != rnd.rank or float(config.get("lora_alpha", "nan")) != rnd.alpha:
        raise SteerhealError(
            f"{what}: adapter_config.json says r={config.get('r')}, alpha={config.get('lora_alpha')} "
            f"but gated.json says r={rnd.rank}, alpha={rnd.alpha}; the files do not belong together"
        )
    tensors = read_weights(folder, what)
    foreign = sorted(set(tensors) - {key for module in adapter.target_names for key in lora_keys(module)})
    if foreign:
        raise SteerhealError(f"{what}: unexpected tensors {foreign[:4]}; the adapter file is damaged or foreign")
    out = {}
    for module in adapter.target_names:
        key_a, key_b = lora_keys(module)
        if key_a not in tensors or key_b not in tensors:
            raise SteerhealError(f"{what}: no factors for {module}; the adapter file is damaged or foreign")
        a, b = tensors[key_a], tensors[key_b]
        layer = adapter.model.get_submodule(module)
        in_f, out_f = _in_out(layer)
        if (
            a.shape != (rnd.rank, in_f)
            or b.shape != (out_f, rnd.rank)
            or not (a.isfinite().all() and b.isfinite().all())
        ):
            raise SteerhealError(
                f"{what}: factors of {module} have shapes {tuple(a.shape)}, {tuple(b.shape)} (expected "
                f"{(rnd.rank, in_f)}, {(out_f, rnd.rank)}) or are not finite; the file is damaged"
            )
        out[module] = (a, b)
    return out


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _in_out(layer: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or a transposed Conv1D (whose weight is [in, out])."""
    if linear_kind(layer) == "conv1d":
        return int(layer.weight.shape[0]), int(layer.weight.shape[1])
    return int(layer.in_features), int(layer.out_features)
