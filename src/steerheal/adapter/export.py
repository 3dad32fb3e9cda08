"""Rounds out of the model: one plain peft adapter (`export_peft`: the rounds' factors concatenated, gates folded
into B) or a dense merged model (`bake`: 4-bit weights de-quantised and merged in float32, `bake.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import PreTrainedModel

from steerheal.adapter.bake import merge_dense
from steerheal.adapter.lowrank import weighted_concat
from steerheal.adapter.peft_files import lora_keys, write_adapter
from steerheal.adapter.save_and_load import FORMAT_VERSION
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, check_output_folder, provenance
from steerheal.lm.fingerprint import quantization
from steerheal.log import logger, quiet_bitsandbytes

if TYPE_CHECKING:
    from steerheal.adapter.gated import GatedLoRA

EXPORT_META_FILE = "steerheal_export.json"


def export_peft(
    adapter: GatedLoRA,
    directory: str | Path,
    history: float | Sequence[float] = 1.0,
    current: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """`GatedLoRA.export_peft` (its docstring says what): the rounds' factors concatenated, gates folded into B,
    written with a steerheal_export.json beside peft's files."""
    with quiet_bitsandbytes():  # peft imports bitsandbytes
        from peft import LoraConfig

    check_output_folder(Path(directory), "export_peft", EXPORT_META_FILE, overwrite)

    parts = adapter._contributing(history, current, "export_peft")
    if not parts:
        current_name = adapter.current.name if adapter.current else "none"
        raise SteerhealError(
            f"export_peft: no rounds to export: the history holds {len(adapter.history)} rounds (at the given gates "
            f"none is on) and the current round {current_name} is untrained or gated to 0. Train a round first."
        )
    tensors: dict[str, Tensor] = {}
    for module in adapter.target_names:
        a, b = weighted_concat([adapter._factors(r, module) for r, _ in parts], [g * r.scale for r, g in parts])
        key_a, key_b = lora_keys(module)
        tensors[key_a], tensors[key_b] = a, b
    rank = sum(r.rank for r, _ in parts)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=list(adapter.target_names),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=adapter.fan_in_fan_out,
        base_model_name_or_path=adapter.fingerprint.name_or_path or None,
    )
    directory = Path(directory)
    write_adapter(directory, config, tensors)
    atomic_write_json(
        directory / EXPORT_META_FILE,
        {
            "kind": "steerheal.peft_export",
            "format_version": FORMAT_VERSION,
            "rounds": [{"name": r.name, "gate": g, "rank": r.rank} for r, g in parts],
            "fingerprint": adapter.fingerprint.to_dict(),
            **provenance(),
        },
    )
    logger.info(f"exported {[r.name for r, _ in parts]} as one peft adapter of rank {rank} to {directory}")
    return directory


def bake(
    adapter: GatedLoRA,
    dtype: torch.dtype = torch.float32,
    history: float | Sequence[float] = 1.0,
    current: float = 1.0,
    device: str = "cpu",
) -> PreTrainedModel:
    """`GatedLoRA.bake` (its docstring says what): the 8-bit refusal, the float32 merge, the rounding report."""
    if quantization(adapter.model) == "8bit":
        raise SteerhealError(
            "bake: the base is 8-bit; steerheal de-quantises only 4-bit bases. Load the base unquantised (or in "
            "4-bit), GatedLoRA.load the saved rounds onto it, and bake that."
        )
    parts = adapter._contributing(history, current, "bake")
    deltas = adapter._deltas(parts)
    if not deltas:
        logger.warning("bake: no round contributes at these gates; the baked model is the base, densified")
    dense, report = merge_dense(adapter.model, deltas, dtype, device)
    report["rounds"] = [{"name": r.name, "gate": g} for r, g in parts]
    adapter.last_bake_report = report
    if dtype != torch.float32:
        logger.warning(
            f"bake to {report['dtype']}: rounding moved the merged weights by "
            f"{report['relative_error_of_delta']:.3g} "
            f"of the adapters' own delta (Frobenius; worst {report['worst_module']}: "
            f"{report['worst_relative_error']:.3g}). Bake in float32 to keep the deltas exactly."
        )
    else:
        logger.info(f"baked {len(deltas)} modules into a dense float32 {type(dense).__name__}")
    return dense


# ------------------------------------------------------------------ files
