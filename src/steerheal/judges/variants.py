"""The frontier's variants of one model: base, steering at α·c*, the student at dial g; and their KL to the base.

Every variant is the same model in a different state, entered by a context: the base is the adapter with
every gate 0 (bit for bit), steering is the base plus the teacher's hook at α·c*, the student is the adapter
dialled to g. So one model in memory serves all of them, and the base reference inside every KL is exact.

KL(variant ‖ base) per token is scored teacher-forced on completion tokens through the memory-bounded path
(`training.bounded`): the final hidden states of the variant and of the base are gathered at the completion
positions and the LM head runs on `chunk` of them at a time, so a 262k vocabulary never makes
`[batch, length, vocab]` logits. Two views of the same divergence:

- on each variant's *own* samples (where that variant actually goes: steering's babble included);
- on the base's *fixed greedy continuations* (the same text for every variant, as calibration and verify
  read it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.adapter.gated import GatedLoRA
from steerheal.errors import SteerhealError
from steerheal.lm.blocks import model_device
from steerheal.lm.texts import encode_ids, left_pad
from steerheal.read.vector import Vector
from steerheal.training.bounded import completion_positions, final_hidden, gather, head_parts, token_scores

KINDS = ("base", "steering", "student")
Context = Callable[[], AbstractContextManager[object]]


@dataclass(frozen=True)
class Variant:
    """One point of a curve: `kind` at `value` (α for steering, g for the student, 0 for the base)."""

    kind: str
    value: float
    enter: Context  # a fresh context per use: the model in this variant's state inside it

    @property
    def name(self) -> str:
        return "base" if self.kind == "base" else f"{self.kind}@{self.value:g}"


def variants(
    model: nn.Module, adapter: GatedLoRA, teacher: Vector, alphas: Sequence[float], dials: Sequence[float]
) -> list[Variant]:
    """Base, then steering at every α (teacher.coeff is c*), then the student at every dial g."""
    if teacher.coeff is None:
        raise SteerhealError(
            "frontier: the teacher vector has no dose (coeff); pass the calibrated teacher (round 0's vector)"
        )

    def base() -> AbstractContextManager[object]:
        return adapter.reference("base")

    def steered(alpha: float) -> Context:
        @contextmanager
        def enter() -> Iterator[None]:
            with adapter.reference("base"), teacher.steer(model, alpha=alpha):
                yield

        return enter

    def student(g: float) -> Context:
        return lambda: adapter.dial(g)

    return [
        Variant("base", 0.0, base),
        *(Variant("steering", float(a), steered(float(a))) for a in alphas),
        *(Variant("student", float(g), student(float(g))) for g in dials),
    ]


@torch.no_grad()
def kl_to_base(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    variant: Context,
    base: Context,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 8,
    chunk: int = 64,
) -> Float[Tensor, " tokens"]:
    """Per-token KL(variant ‖ base) in float32 over every completion token (empty completions skipped),
    completions row by row in order. The LM head is shared by both states (adapters target blocks only)."""
    if batch_size < 1 or chunk < 1:
        raise SteerhealError(f"kl_to_base: batch_size={batch_size} and chunk={chunk} must be at least 1")
    rows = [i for i, c in enumerate(completion_ids) if len(c) > 0]
    head = head_parts(model)
    device = model_device(model)
    values = []
    for start in range(0, len(rows), batch_size):
        items = [encode_ids(tok, prompt_ids[i], completion_ids[i]) for i in rows[start : start + batch_size]]
        batch = left_pad(items, int(tok.pad_token_id)).to(device)
        positions = completion_positions(batch.input_ids, batch.completion_mask())
        with variant():
            hidden = gather(final_hidden(model, batch), positions)
        with base():
            ref = gather(final_hidden(model, batch), positions)
        _, kl = token_scores(head, hidden, positions.targets, ref_hidden=ref, direction="rev", chunk=chunk)
        assert kl is not None  # a reference was given
        values.append(kl.float().cpu())
    return torch.cat(values) if values else torch.zeros(0)
