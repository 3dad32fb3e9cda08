"""Per-token concept scores while a model runs: `with readout.monitor(model) as trace: model.generate(...)`.

A forward hook on each readout layer's block dots the block's output with the readout's unit rows, for
every position of every forward call: the whole (left-padded) prompt in the first call, then the one new
token of each cached step. A pre-hook on the model records each call's input ids and the attention mask
of its positions. A call without a KV cache (or with an empty one) starts a new *segment*: a new
`generate` or `steerheal.sample` batch; the calls of a segment are concatenated along positions.

The last sampled token is never forwarded (generation stops once it is chosen), so it has no scores: a
prompt of P tokens and N new tokens gives P + N − 1 positions. In a batch, a row that has stopped is still
forwarded (its stop token, then pads) until every row is done; from its stop token on its positions are
padding (`mask == False`), as they would be alone: a cached one-token step that forwards a stop token the
model declares ends that row (`steerheal.sample` masks them itself). A call that reaches past the model's
context is refused, as `capture` refuses a text longer than it. Scores are float32; the hooks only read,
so the model's outputs are unchanged, and they are removed on exit, also on exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.lm.blocks import block_hidden, context_length, decoder_layers, unwrap
from steerheal.lm.generate import stop_ids

if TYPE_CHECKING:
    from steerheal.read.readout import Readout


@dataclass
class _Call:
    ids: Tensor | None  # [B, L] input ids (None when the caller passed embeddings)
    mask: Tensor | None  # [B, L] attention mask of this call's positions
    scores: list[Tensor | None]  # per readout layer, [B, L, n_concepts]


class Trace:
    """What a monitor recorded. `scores[b, p, l, c]`: sequence b, processed position p, readout layer
    `layers[l]`, concept `concepts[c]`. Sequences are numbered in the order the model saw them (segments
    one after another); padding positions (left padding, and the tail of a shorter segment) have
    `mask == False` and NaN scores where nothing was computed."""

    def __init__(self, concepts: list[str], layers: list[int], stops: frozenset[int] = frozenset()) -> None:
        self.concepts = list(concepts)
        self.layers = list(layers)
        self.stops = torch.tensor(sorted(stops), dtype=torch.long)
        self._segments: list[list[_Call]] = []

    # ------------------------------------------------------------------ assembly
    def _segment(self, calls: list[_Call]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch = {c.scores[0].shape[0] for c in calls if c.scores[0] is not None} | {
            c.ids.shape[0] for c in calls if c.ids is not None
        }
        if len(batch) != 1:
            raise SteerhealError(
                f"the batch size changed within one generation ({sorted(batch)}); the monitor follows batch rows "
                "as forwarded and cannot align them (beam search or a batch that shrinks are not supported)"
            )
        b, k = batch.pop(), len(self.concepts)
        scores, masks, ids, steps = [], [], [], []
        ended = torch.zeros(b, dtype=torch.bool)  # rows whose stop token was forwarded in a cached step
        for step, call in enumerate(calls):
            length = next(
                (s.shape[1] for s in call.scores if s is not None), call.ids.shape[1] if call.ids is not None else 0
            )
            layer_scores = [
                s.detach().float().cpu() if s is not None else torch.full((b, length, k), float("nan"))
                for s in call.scores
            ]
            scores.append(torch.stack(layer_scores, dim=2))
            mask = call.mask.cpu().bool() if call.mask is not None else torch.ones(b, length, dtype=torch.bool)
            if step > 0 and length == 1 and call.ids is not None:
                ended |= torch.isin(call.ids[:, 0].cpu(), self.stops)
                mask = mask & ~ended[:, None]
            masks.append(mask)
            ids.append(call.ids.cpu().long() if call.ids is not None else torch.full((b, length), -1))
            steps.append(torch.full((b, length), step))
        return torch.cat(scores, 1), torch.cat(masks, 1), torch.cat(ids, 1), torch.cat(steps, 1)

    def _assembled(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n_layers, k = len(self.layers), len(self.concepts)
        parts = [self._segment(calls) for calls in self._segments if calls]
        if not parts:
            return (
                torch.zeros(0, 0, n_layers, k),
                torch.zeros(0, 0, dtype=torch.bool),
                torch.zeros(0, 0, dtype=torch.long),
                torch.zeros(0, 0, dtype=torch.long),
            )
        width = max(p[0].shape[1] for p in parts)
        out: list[list[Tensor]] = [[], [], [], []]
        for scores, mask, ids, steps in parts:
            pad = width - scores.shape[1]
            b = scores.shape[0]
            out[0].append(torch.cat([scores, torch.full((b, pad, n_layers, k), float("nan"))], 1))
            out[1].append(torch.cat([mask, torch.zeros(b, pad, dtype=torch.bool)], 1))
            out[2].append(torch.cat([ids, torch.full((b, pad), -1)], 1))
            out[3].append(torch.cat([steps, torch.full((b, pad), -1)], 1))
        return tuple(torch.cat(x, 0) for x in out)  # type: ignore[return-value]

    @property
    def scores(self) -> Float[Tensor, "batch positions layers concepts"]:
        return self._assembled()[0]

    @property
    def mask(self) -> Bool[Tensor, "batch positions"]:
        """True at real tokens (attention mask 1), False at padding."""
        return self._assembled()[1]

    @property
    def tokens(self) -> Int[Tensor, "batch positions"]:
        """The token id forwarded at each position (-1 where unknown or padding the trace)."""
        return self._assembled()[2]

    @property
    def steps(self) -> Int[Tensor, "batch positions"]:
        """Which forward call of its segment read the position: 0 for the prompt, i for the i-th cached step."""
        return self._assembled()[3]

    def table(self, tok: PreTrainedTokenizerBase | None = None) -> Any:
        """A long polars table, one row per (sequence, real token, layer, concept): `sequence, position`
        (the token's index in its sequence, 0 = first non-pad token), `step, token` (id; and `text` with
        `tok`), `layer, concept, score`."""
        import polars as pl

        scores, mask, ids, steps = self._assembled()
        seq, col = mask.nonzero(as_tuple=True)
        position = (mask.long().cumsum(1) - 1)[seq, col]
        n_layers, k = len(self.layers), len(self.concepts)
        reps = n_layers * k
        columns: dict[str, Any] = {
            "sequence": seq.repeat_interleave(reps).numpy(),
            "position": position.repeat_interleave(reps).numpy(),
            "step": steps[seq, col].repeat_interleave(reps).numpy(),
            "token": ids[seq, col].repeat_interleave(reps).numpy(),
        }
        if tok is not None:
            texts = [tok.convert_ids_to_tokens(int(t)) if t >= 0 else None for t in ids[seq, col]]
            columns["text"] = [t for t in texts for _ in range(reps)]
        columns["layer"] = torch.tensor(self.layers).repeat_interleave(k).repeat(len(seq)).numpy()
        columns["concept"] = self.concepts * (n_layers * len(seq))
        columns["score"] = scores[seq, col].reshape(-1).numpy()
        return pl.DataFrame(columns)


def _past_length(past: Any) -> int:
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return int(past[0][0].shape[-2]) if len(past) else 0  # legacy tuple cache: (key, value) per layer


def _starts_segment(kwargs: dict[str, Any]) -> bool:
    past = kwargs.get("past_key_values")
    return past is None or _past_length(past) == 0


@contextmanager
def monitor(readout: Readout, model: nn.Module) -> Iterator[Trace]:
    """Hooks that fill a `Trace` with the readout's concept scores for every position forwarded inside."""
    readout.check_model(model)
    inner = unwrap(model)
    blocks = decoder_layers(model)
    trace = Trace(readout.concepts, readout.layers, stop_ids(model, None))
    context = context_length(model)
    rows = {layer: readout.vectors[layer] for layer in readout.layers}
    cast: dict[tuple[int, torch.device], Tensor] = {}

    def current() -> _Call:
        """The call being forwarded (a block run without the model's forward gets a call of its own)."""
        if not trace._segments:
            trace._segments.append([])
        calls = trace._segments[-1]
        if not calls:
            calls.append(_Call(None, None, [None] * len(readout.layers)))
        return calls[-1]

    def pre_hook(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        length = ids.shape[1] if ids is not None else embeds.shape[1] if embeds is not None else None
        if length is None:
            return
        starts = _starts_segment(kwargs)
        reach = length + (0 if starts else _past_length(kwargs["past_key_values"]))
        if reach > context:
            raise SteerhealError(
                f"monitor: this forward call reaches {reach} positions (its input is {length} tokens) but the model's "
                f"context is {context}; shorten the prompt (or max_new_tokens) to fit, as capture requires"
            )
        if starts or not trace._segments:
            trace._segments.append([])
        mask = kwargs.get("attention_mask")
        trace._segments[-1].append(
            _Call(
                ids.detach() if ids is not None else None,
                mask[:, -length:].detach() if isinstance(mask, Tensor) and mask.ndim == 2 else None,
                [None] * len(readout.layers),
            )
        )

    def make_hook(index: int, layer: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden = block_hidden(output)
            key = (layer, hidden.device)
            if key not in cast:
                cast[key] = rows[layer].to(hidden.device)
            call = current()
            call.scores[index] = hidden.detach().float() @ cast[key].T

        return hook

    handles = [inner.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    try:
        for index, layer in enumerate(readout.layers):
            handles.append(blocks[layer].register_forward_hook(make_hook(index, layer)))
        yield trace
    finally:
        for handle in handles:
            handle.remove()
