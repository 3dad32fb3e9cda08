"""Record the raw residual stream (the output of decoder block i) at chosen layers and positions.

Layer i is the output of block i: for every block but the last it equals `output_hidden_states[i + 1]`;
the last block is read before the final norm that transformers applies to its last hidden state.

Positions: `last` (last non-pad token), `prompt_end` (last token of the prompt: the assistant tag of a
templated prompt, or the prompt part of a `(prompt, completion)` pair), `mean` (mean over content tokens:
non-pad, non-special and not the first position, so an attention sink, BOS or not, and template tags never
dominate; `lm.texts.content_marks`), `all` (every content token, kept per text). Each unique text is
forwarded once; the forward pass stops after the deepest requested block (no later blocks, no LM head);
activations leave on the CPU in float32 (float64 when the model computes in float64, so exactness checks keep
their precision); hooks are removed also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, no_type_check

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.lm.blocks import block_hidden, context_length, decoder_layers, hidden_size, model_device, n_layers
from steerheal.lm.texts import Batch, Text, encode, left_pad, length_sorted_batches, require_pad_token
from steerheal.log import progress_disabled

POOLED: tuple[str, ...] = ("last", "prompt_end", "mean")  # one vector per text
POSITIONS: tuple[str, ...] = (*POOLED, "all")


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block: nothing after it is needed."""


def check_layers(model: nn.Module, layers: Sequence[int]) -> list[int]:
    """Sorted layer indices, each in range for the model; duplicates and an empty list are errors."""
    total = n_layers(model)
    layers = list(layers)
    if not layers:
        raise SteerhealError("layers is empty; pass at least one block index (or None for the default)")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < total:
            raise SteerhealError(
                f"layer {layer!r} is out of range for a model with {total} decoder blocks (valid: 0..{total - 1})"
            )
    if len(set(layers)) != len(layers):
        raise SteerhealError(f"layers {layers} has duplicates")
    return sorted(layers)


def check_fits(model: nn.Module, kind: str, hidden: int, layers: Sequence[int]) -> None:
    """A `kind` (vector, readout) of width `hidden` at `layers` can steer or be read from this model."""
    if hidden_size(model) != hidden:
        raise SteerhealError(
            f"this {kind} has hidden size {hidden} but the model has {hidden_size(model)}; "
            "it was made for another model"
        )
    check_layers(model, layers)


def check_position(position: str) -> None:
    """A pooled position (`all` is read by `capture_tokens` and the readouts' `subspace`, not here)."""
    if position not in POOLED:
        raise SteerhealError(f"position={position!r}: use one of {list(POOLED)}")


@contextmanager
def recording(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, Tensor]]:
    """Forward hooks that put each listed block's output hidden state into the yielded dict, and stop the
    forward pass after the deepest (`_StopForward`)."""
    blocks = decoder_layers(model)
    store: dict[int, Tensor] = {}
    deepest = max(layers)

    @no_type_check  # created per call: not worth a runtime check each time (BEARTYPE=1)
    def make_hook(layer: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            store[layer] = block_hidden(output)
            if layer == deepest:
                raise _StopForward

        return hook

    handles = []
    try:
        for layer in layers:
            handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _statistics_dtype(hidden: Tensor) -> Tensor:
    """float32 for everything narrower; float64 stays float64."""
    return hidden.cpu().to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)


def _forward_batches(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    layers: list[int],
    batch_size: int,
    progress: bool | None,
    what: str,
) -> Iterator[tuple[list[int], Batch, dict[int, Tensor]]]:
    """Yield (indices into the unique texts, the batch, layer -> [B, L, d] activations)."""
    pad_id = require_pad_token(tok)
    encoded = encode(tok, texts, context_length(model), what)
    device = model_device(model)
    plan = length_sorted_batches([len(e.ids) for e in encoded], batch_size)
    for rows in tqdm(plan, desc=f"capture {what}", disable=progress_disabled(progress)):
        batch = left_pad([encoded[i] for i in rows], pad_id)
        on_device = batch.to(device)
        with recording(model, layers) as store, suppress(_StopForward):
            model(
                input_ids=on_device.input_ids,
                attention_mask=on_device.attention_mask,
                position_ids=on_device.position_ids,
                use_cache=False,
            )
        missing = set(layers) - set(store)
        if missing:
            raise SteerhealError(f"the forward pass never reached blocks {sorted(missing)}; is the model complete?")
        yield rows, batch, store


def _unique(texts: Sequence[Text], what: str) -> tuple[list[Text], list[int]]:
    if len(texts) == 0:
        raise SteerhealError(f"{what} is empty; pass at least one text")
    index: dict[Text, int] = {}
    inverse = [index.setdefault(t if isinstance(t, str) else tuple(t), len(index)) for t in texts]
    return list(index), inverse


@checked
@torch.no_grad()
def capture(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    layers: Sequence[int],
    position: str = "last",
    batch_size: int = 8,
    progress: bool | None = None,
    what: str = "texts",
) -> dict[int, Float[Tensor, "n hidden"]]:
    """Pooled activations `{layer: [len(texts), hidden]}` (float32, CPU) at `last`, `prompt_end` or `mean`."""
    check_position(position)
    layers = check_layers(model, layers)
    unique, inverse = _unique(texts, what)
    out: dict[int, Tensor] = {}
    for rows, batch, store in _forward_batches(model, tok, unique, layers, batch_size, progress, what):
        for layer in layers:
            hidden = _statistics_dtype(store[layer])
            if position == "last":
                pooled = hidden[:, -1]
            elif position == "prompt_end":
                pooled = hidden[torch.arange(len(rows)), batch.prompt_end]
            else:
                counts = batch.content_mask.sum(-1, keepdim=True)
                if (counts == 0).any():
                    bad = unique[rows[int((counts.squeeze(-1) == 0).nonzero()[0])]]
                    raise SteerhealError(f"a text in {what} has no content tokens to average: {bad!r}")
                pooled = (hidden * batch.content_mask.unsqueeze(-1)).sum(1) / counts.to(hidden.dtype)
            if layer not in out:
                out[layer] = torch.empty(len(unique), hidden.shape[-1], dtype=hidden.dtype)
            out[layer][rows] = pooled
    return {layer: acts[inverse] for layer, acts in out.items()}


@torch.no_grad()
def capture_each(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    layers: Sequence[int],
    reduce: Callable[[Tensor], Any],
    batch_size: int = 8,
    progress: bool | None = None,
    what: str = "texts",
) -> dict[int, list[Any]]:
    """`reduce(tokens)` of each text's content-token activations `[n_tokens, hidden]`, per layer.

    The reduction runs batch by batch, so a corpus never holds every token activation at once (a per-text
    SVD basis is a few columns; the tokens of 300 stories at hidden 4096 are gigabytes).
    """
    layers = check_layers(model, layers)
    unique, inverse = _unique(texts, what)
    out: dict[int, list[Any]] = {layer: [None] * len(unique) for layer in layers}
    for rows, batch, store in _forward_batches(model, tok, unique, layers, batch_size, progress, what):
        for layer in layers:
            hidden = _statistics_dtype(store[layer])
            for k, row in enumerate(rows):
                tokens = hidden[k][batch.content_mask[k]]
                if len(tokens) == 0:
                    raise SteerhealError(f"a text in {what} has no content tokens: {unique[row]!r}")
                out[layer][row] = reduce(tokens)
    return {layer: [acts[i] for i in inverse] for layer, acts in out.items()}


@checked
def capture_tokens(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    layers: Sequence[int],
    batch_size: int = 8,
    progress: bool | None = None,
    what: str = "texts",
) -> dict[int, list[Float[Tensor, "tokens hidden"]]]:
    """`position="all"`: every content token's activation, one `[n_tokens, hidden]` tensor per text."""
    return capture_each(model, tok, texts, layers, lambda tokens: tokens, batch_size, progress, what)


def residual_norm(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[Text],
    layers: Sequence[int],
    batch_size: int = 8,
) -> float:
    """The mean per-token norm of the residual stream over content tokens at `layers`: the unit that
    relative steering strengths are expressed in (activation norms differ 50x between architectures)."""
    sums = capture_each(model, tok, texts, layers, lambda t: (float(t.norm(dim=-1).sum()), len(t)), batch_size)
    per_layer = [sum(s for s, _ in rows) / sum(n for _, n in rows) for rows in sums.values()]
    return sum(per_layer) / len(per_layer)
