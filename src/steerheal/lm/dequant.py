"""The dense float32 weight a layer computes with, also when bitsandbytes stores it in 4 bits.

Baking merges LoRA deltas into dense weights. peft's own merge on a 4-bit base adds the delta and
re-quantises, which throws most of a small delta away (measured in docs/adapter.md: logits off by 2.1 where
the adapters moved them by 1.6), so steerheal de-quantises
every 4-bit weight itself and merges in float32. bitsandbytes keeps a 4-bit weight in one of two
layouts: the standard one (`dequantize_4bit` reads it) and, on CPUs with AVX512-BF16 after the first
inference forward, a repacked one with bfloat16 block scales, which `dequantize_4bit` cannot read; that
one is unpacked here, with the same block scales the forward uses.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from steerheal.errors import SteerhealError
from steerheal.log import quiet_bitsandbytes


def dense_weight(param: Tensor, what: str) -> Float[Tensor, "..."]:
    """float32 copy of a weight: a plain tensor cast, a 4-bit one de-quantised; 8-bit is refused."""
    kind = type(param).__name__
    if kind == "Params4bit":
        state = getattr(param, "quant_state", None)
        if state is None:
            raise SteerhealError(f"{what}: 4-bit weight without a quant_state; the model was not quantised fully")
        if getattr(state, "packing_format_for_cpu", False):
            return _dequantize_cpu_packed(param.data, state)
        with quiet_bitsandbytes():
            import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(param.data, state).float()
    if kind == "Int8Params":
        raise SteerhealError(
            f"{what}: 8-bit (LLM.int8) weights are not de-quantised by steerheal: their forward also quantises "
            "the activations, so a dense merge would not reproduce the student. Train on a 4-bit or unquantised "
            "base, or load this base unquantised and GatedLoRA.load the saved rounds onto it before baking."
        )
    if not param.dtype.is_floating_point:
        raise SteerhealError(f"{what}: weight of dtype {param.dtype} is neither floating point nor bitsandbytes 4-bit")
    return param.detach().float().clone()


def _dequantize_cpu_packed(packed: Tensor, state: object) -> Float[Tensor, "out_features in_features"]:
    """Inverse of bitsandbytes' `_convert_weight_packed_for_cpu`: nibbles in blocks of 32 rows, absmax
    stored as bfloat16 of shape [in / blocksize, out]."""
    n_out, half = packed.shape
    n_in = 2 * half
    block_n = 32
    low, high = packed & 0xF, (packed >> 4) & 0xF
    codes = torch.cat([low.reshape(-1, 32), high.reshape(-1, 32)], dim=-1)  # 32 low nibbles, then 32 high
    codes = codes.reshape(n_out // block_n, half, block_n, 2).transpose(1, 2).reshape(n_out, n_in)
    table = state.code.float().to(packed.device)  # type: ignore[attr-defined]
    absmax = state.absmax.float().T  # type: ignore[attr-defined]  # [out, in / blocksize]
    scales = absmax.repeat_interleave(int(state.blocksize), dim=1)  # type: ignore[attr-defined]
    return (table[codes.long()] * scales).to(state.dtype).float()  # type: ignore[attr-defined]
