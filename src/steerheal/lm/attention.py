"""Scaled-dot-product attention with a broadcast mask builder: transformers' own pieces, recombined.

transformers 4.57 builds the 4D attention mask of every padded forward call with `torch.vmap` over the mask
functions (`sdpa_mask_recent_torch`); on a small model that costs more than the forward itself (about 13 ms
per call on toyworld, over half of a sampling run). Its `sdpa_mask_older_torch` builds the same mask from
the same mask functions (causal, padding, sliding window) by broadcasting. Through transformers' public
registries (`AttentionInterface`, `AttentionMaskInterface`) steerheal registers `sdpa` attention paired
with that builder as `steerheal_sdpa`; outputs are identical (tested on every tiny architecture), sampling
on toyworld is about a third faster. Calls without a 2D attention mask keep transformers' own builder: only
there does it look for packed sequences in the position ids, which the broadcast builder does not index
correctly, and without padding it usually skips the mask altogether anyway.

Grouped-query attention (SmolLM2: 9 query heads on 3 key/value heads) without gradients runs torch's SDPA with
`enable_gqa=True` instead of transformers' `repeat_kv`, which copies every cached key and value `groups` times
at each decoding step on the CPU (transformers uses `enable_gqa` only on CUDA without a mask). The outputs are the
same bit for bit (tested; the kernel reads each key/value head in place); with gradients transformers' path is
kept, because the backward's reduction over the group then sums in another order (a 1e-6 relative difference).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

NAME = "steerheal_sdpa"
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask_older_torch, sdpa_mask_recent_torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def mask(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        build = sdpa_mask_recent_torch if attention_mask is None else sdpa_mask_older_torch
        return build(*args, attention_mask=attention_mask, **kwargs)

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        grouped = key.shape[1] != query.shape[1] and hasattr(module, "num_key_value_groups")
        if not grouped or torch.is_grad_enabled() or not _GQA or set(kwargs) - _PLAIN_KWARGS:
            return sdpa(module, query, key, value, attention_mask, **kwargs)
        return _grouped_sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, mask)
    _registered = True


_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)  # enable_gqa: torch 2.5
_PLAIN_KWARGS = {"dropout", "scaling", "is_causal", "sliding_window", "position_ids", "cache_position", "use_cache"}


def _grouped_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **_: Any,
) -> tuple[Any, None]:
    """transformers' `sdpa_attention_forward` (4.57) with `enable_gqa=True` in place of `repeat_kv`."""
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


def use_broadcast_mask(model: PreTrainedModel) -> None:
    """Switch a model that runs transformers' `sdpa` attention to `steerheal_sdpa` (others are left as they are,
    and so are models whose attention is not built on `AttentionInterface`, such as BERT: transformers would only
    print a warning for them)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    if not model._can_set_attn_implementation():
        return
    _register()
    model.set_attn_implementation(NAME)
