"""Add a fixed shift to the residual stream at chosen blocks, at every position of every forward call.

Steering every position is what makes it KV-cache safe: under cached `generate` each call carries only the new token,
and it is steered; the cached keys and values were computed from steered states when their tokens were forwarded.
(Libraries that count positions per call steer only the first generated token once the cache is on: steering-vectors
0.12's `token_indices` selection is per call.) Active steering is registered per model, so that training code can
refuse to run with a steering hook left on.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, no_type_check

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerheal.lm.blocks import block_hidden, decoder_layers, unwrap

_ACTIVE: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def steering_active(model: nn.Module) -> bool:
    """Whether any steerheal steering context is open on this model (or the model it wraps)."""
    return _ACTIVE.get(unwrap(model), 0) > 0


@contextmanager
def add_to_residual(model: nn.Module, shifts: dict[int, Float[Tensor, " hidden"]]) -> Iterator[None]:
    """Within the block: output of block i += shifts[i]. Hooks are removed on exit, also on exceptions."""
    blocks = decoder_layers(model)
    inner = unwrap(model)
    handles = []

    @no_type_check  # created per call: not worth a runtime check each time (BEARTYPE=1)
    def make_hook(shift: Tensor) -> Any:
        cast: dict[tuple[torch.dtype, torch.device], Tensor] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = block_hidden(output)
            key = (hidden.dtype, hidden.device)
            if key not in cast:
                cast[key] = shift.to(dtype=hidden.dtype, device=hidden.device)
            steered = hidden + cast[key]
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    _ACTIVE[inner] = _ACTIVE.get(inner, 0) + 1
    try:
        for layer, shift in shifts.items():
            handles.append(blocks[layer].register_forward_hook(make_hook(shift)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        _ACTIVE[inner] -= 1
