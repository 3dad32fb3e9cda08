"""Merge LoRA deltas into a fresh dense copy of the base: de-quantised, summed in float32, cast last.

The dense model is a new instance of the base's own class, built from its config with the quantisation
config dropped, so that `save_pretrained` writes an ordinary checkpoint that
`AutoModelForCausalLM.from_pretrained` loads. Every weight is taken from the base (4-bit ones
de-quantised, `dequant.py`), the targeted ones plus their delta, all in float32. A lower output dtype
is a cast of the float32 sum, made only when asked; its rounding is measured against the deltas
themselves, because that is what a low-precision merge loses first (a small delta can vanish
in bfloat16: docs/adapter.md measures it).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from steerheal.errors import SteerhealError
from steerheal.lm.blocks import unwrap
from steerheal.lm.dequant import dense_weight


def _dense_name(name: str) -> str | None:
    """A parameter's name in the dense model, or None for a peft adapter's own parameter."""
    parts = name.split(".")
    if any(part.startswith("lora_") for part in parts):
        return None
    return ".".join(part for part in parts if part != "base_layer")


def _empty_dense(inner: PreTrainedModel, dtype: torch.dtype, device: str) -> PreTrainedModel:
    from transformers.modeling_utils import no_init_weights

    config = copy.deepcopy(inner.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    with no_init_weights(), torch.device(device):
        dense = type(inner)._from_config(config, dtype=dtype)
    return dense.eval()


def merge_dense(
    model: torch.nn.Module,
    deltas: dict[str, Tensor],  # shapes differ per module, so no jaxtyping shape here
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """A dense model whose weight at each module of `deltas` is base + delta (delta in the weight's own
    layout), and a report of the rounding a lower `dtype` made, relative to the deltas' norm."""
    if not dtype.is_floating_point:
        raise SteerhealError(f"bake dtype={dtype} is not a floating-point dtype; use torch.float32 (the default)")
    inner = unwrap(model)
    dense = _empty_dense(inner, dtype, device)
    targets = dense.state_dict(keep_vars=True)
    written: set[str] = set()
    cut2 = total2 = 0.0
    worst = ("", 0.0)
    for name, buffer in inner.named_buffers(remove_duplicate=False):
        dense_name = _dense_name(name)
        if dense_name in targets:  # others (rotary frequencies) are computed by the dense model itself
            with torch.no_grad():
                targets[dense_name].copy_(buffer)
            written.add(dense_name)
    for name, tensor in inner.named_parameters(remove_duplicate=False):
        dense_name = _dense_name(name)
        if dense_name is None:
            continue  # a LoRA factor
        if dense_name not in targets:
            raise SteerhealError(
                f"bake: the base's parameter {dense_name!r} has no place in a fresh {type(inner).__name__}; "
                "this model's layout cannot be baked"
            )
        value = dense_weight(tensor, f"bake: {dense_name}").to(device)
        target = targets[dense_name]
        module_name = dense_name.rsplit(".", 1)[0]
        delta = deltas.get(module_name) if dense_name.endswith(".weight") else None
        if delta is not None:
            if delta.shape != value.shape:
                raise SteerhealError(
                    f"bake: delta for {module_name} has shape {tuple(delta.shape)} but its weight {tuple(value.shape)}"
                )
            value = value + delta.to(device=device, dtype=torch.float32)
        if value.shape != target.shape:
            raise SteerhealError(
                f"bake: {dense_name} has shape {tuple(value.shape)}, the dense model expects {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(value)
        if delta is not None and dtype != torch.float32:
            cut, norm = float((target.detach().float() - value).norm()) ** 2, float(delta.norm()) ** 2
            cut2, total2 = cut2 + cut, total2 + norm
            if norm > 0 and math.sqrt(cut / norm) > worst[1]:
                worst = (module_name, math.sqrt(cut / norm))
        written.add(dense_name)
    missing = sorted(set(targets) - written)
    if missing:
        raise SteerhealError(f"bake: the base gave no value for {missing[:8]} of the dense model; cannot bake it")
    unused = sorted(set(deltas) - {n.rsplit(".", 1)[0] for n in written})
    if unused:
        raise SteerhealError(f"bake: deltas for {unused[:8]} found no weight in the base")
    report = {
        "dtype": str(dtype).removeprefix("torch."),
        "relative_error_of_delta": math.sqrt(cut2 / total2) if total2 > 0 else 0.0,
        "worst_module": worst[0] or None,
        "worst_relative_error": worst[1],
    }
    return dense, report
