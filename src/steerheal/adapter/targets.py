"""Which linear layers carry LoRA factors: name patterns inside the decoder blocks of a depth band.

A block is chosen by where its centre sits in the stack, `band[0] <= (i + 0.5) / n < band[1]`, so the
same band picks comparable blocks at every depth (0.2-0.8 is the middle 60%, where steer-heal trained).
Inside those blocks a pattern (a regular expression) selects a linear layer when it fully matches the
layer's name within its block (`self_attn.q_proj`) or that name's last part (`q_proj`); no pattern means
every linear layer of the chosen blocks. The result is an explicit list of module names, so what was
targeted is written down in every file, never re-derived.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from torch import nn

from steerheal.adapter.round import check_rank
from steerheal.errors import SteerhealError
from steerheal.lm.blocks import decoder_layers, unwrap
from steerheal.log import quiet_bitsandbytes


def check_band(depth_band: Sequence[float]) -> tuple[float, float]:
    """Two finite numbers with 0 <= low < high <= 1."""
    band = tuple(depth_band)
    if len(band) != 2 or not all(math.isfinite(x) for x in band) or not 0 <= band[0] < band[1] <= 1:
        raise SteerhealError(
            f"depth_band={depth_band!r} is not a band of the stack: pass (low, high) with 0 <= low < high <= 1, "
            "e.g. (0.2, 0.8) for the middle 60% of the blocks"
        )
    return float(band[0]), float(band[1])


def selected_blocks(n_blocks: int, depth_band: Sequence[float]) -> list[int]:
    """Block i of n is selected iff band[0] <= (i + 0.5) / n < band[1]; selecting none is an error."""
    low, high = check_band(depth_band)
    blocks = [i for i in range(n_blocks) if low <= (i + 0.5) / n_blocks < high]
    if not blocks:
        centres = ", ".join(f"{(i + 0.5) / n_blocks:.3f}" for i in range(n_blocks))
        raise SteerhealError(
            f"depth_band={depth_band!r} selects none of the {n_blocks} decoder blocks (block i is selected when "
            f"band[0] <= (i + 0.5) / {n_blocks} < band[1]; the block centres are {centres}). Widen the band."
        )
    return blocks


def linear_kind(module: nn.Module) -> str | None:
    """'linear' for nn.Linear (bitsandbytes' 4-bit and 8-bit layers subclass it), 'conv1d' for GPT-2's
    transposed Conv1D, None for anything else."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, Conv1D):
        return "conv1d"
    return None


def _compile(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise SteerhealError(
                f"target_modules pattern {pattern!r} is not a regular expression ({err}); pass layer names such "
                "as 'q_proj' or patterns such as 'mlp\\..*'"
            ) from err
    return compiled


def select_targets(
    model: nn.Module, target_modules: str | Sequence[str] | None, depth_band: Sequence[float]
) -> tuple[list[str], bool]:
    """Module names (relative to the transformers model) of the targeted linear layers, in model order,
    and whether they are GPT-2 style Conv1D layers (peft's `fan_in_fan_out`)."""
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if target_modules is not None and len(target_modules) == 0:
        raise SteerhealError("target_modules is empty; pass None for every linear layer, or name patterns")
    patterns = None if target_modules is None else _compile(target_modules)
    inner = unwrap(model)
    blocks = decoder_layers(inner)
    prefixes = {id(module): name for name, module in inner.named_modules()}
    used = [False] * len(patterns or [])
    names: list[str] = []
    kinds: set[str] = set()
    linears_seen: list[str] = []
    for index in selected_blocks(len(blocks), depth_band):
        prefix = prefixes[id(blocks[index])]
        for rel, module in blocks[index].named_modules():
            kind = linear_kind(module)
            if kind is None:
                continue
            if len(linears_seen) < 40 and rel not in linears_seen:
                linears_seen.append(rel)
            if patterns is not None:
                hits = [bool(p.fullmatch(rel) or p.fullmatch(rel.rsplit(".", 1)[-1])) for p in patterns]
                if not any(hits):
                    continue
                used = [u or h for u, h in zip(used, hits, strict=True)]
            names.append(f"{prefix}.{rel}")
            kinds.add(kind)
    if target_modules is not None:
        unused = [p for p, u in zip(target_modules, used, strict=True) if not u]
        if unused:
            raise SteerhealError(
                f"target_modules pattern(s) {unused} match no linear layer of the selected blocks; the linear "
                f"layers there are named {linears_seen}. Fix the pattern, or pass None for all of them."
            )
    if not names:
        raise SteerhealError(f"the selected blocks of {type(inner).__name__} hold no linear layer to adapt")
    if len(kinds) > 1:
        raise SteerhealError(
            "the targets mix nn.Linear and GPT-2 style Conv1D layers, which peft cannot adapt in one config; "
            "narrow target_modules to one kind"
        )
    return names, kinds == {"conv1d"}


def check_unadapted(model: nn.Module) -> None:
    with quiet_bitsandbytes():  # peft imports bitsandbytes
        from peft.tuners.tuners_utils import BaseTunerLayer

    inner = unwrap(model)
    if hasattr(inner, "peft_config") or any(isinstance(m, BaseTunerLayer) for m in inner.modules()):
        raise SteerhealError(
            f"this {type(inner).__name__} already carries peft adapters; attach or load a GatedLoRA onto a model "
            "without any (reload the base, or keep using the GatedLoRA that is already attached)"
        )


def attach_plan(
    model: nn.Module, r: int, alpha: float, target_modules: str | Sequence[str] | None, depth_band: Sequence[float]
) -> tuple[list[str] | None, tuple[float, float], list[str], bool]:
    """What a GatedLoRA or a Bank attaches, checked before anything changes `model`: (the target patterns as a list,
    the depth band, the target module names, fan_in_fan_out)."""
    check_rank(r, "r")
    if not math.isfinite(alpha) or alpha <= 0:
        raise SteerhealError(f"alpha={alpha!r}: LoRA alpha is a positive number (peft scales by alpha / r)")
    band = check_band(depth_band)
    check_unadapted(model)
    names, fan_in_fan_out = select_targets(model, target_modules, band)
    patterns = [target_modules] if isinstance(target_modules, str) else target_modules
    return None if patterns is None else list(patterns), band, names, fan_in_fan_out
