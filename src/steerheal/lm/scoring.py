"""Teacher-forced scoring of completions: logits only at the positions that predict completion tokens.

A batch is laid out as left-padded `prompt ids + completion ids` (never re-tokenised text). The model is
asked for the logits of the last `keep` columns only (`logits_to_keep`), so no `[batch, length, vocab]`
tensor exists; `scored` marks which kept columns predict a completion token. `token_kl` compares two such
score tensors per token, in float32 (calibration, verification and the heal barrier all use it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.lm.blocks import model_device
from steerheal.lm.texts import Batch, encode_ids, left_pad

DIRECTIONS = ("rev", "fwd")


@dataclass(frozen=True)
class CompletionBatch:
    batch: Batch
    keep: int  # logits kept: the last `keep` columns
    scored: Bool[Tensor, "batch keep"]  # kept columns that predict a completion token, in order


def completion_batches(
    tok: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int,
) -> list[CompletionBatch]:
    out = []
    for first in range(0, len(prompt_ids), batch_size):
        rows = range(first, min(first + batch_size, len(prompt_ids)))
        batch = left_pad([encode_ids(tok, prompt_ids[i], completion_ids[i]) for i in rows], tok.pad_token_id)
        lengths = torch.tensor([len(completion_ids[i]) for i in rows])
        keep = int(lengths.max()) + 1
        # kept column j predicts the token in column j + 1; a row's completion fills its last lengths[r]
        # columns, so the columns predicting it are the lengths[r] columns before the final one.
        column = torch.arange(keep)
        scored = (column >= keep - 1 - lengths[:, None]) & (column < keep - 1)
        out.append(CompletionBatch(batch, keep, scored))
    return out


def scored_log_probs(model: nn.Module, item: CompletionBatch) -> Float[Tensor, "n_scored vocab"]:
    """float32 log-probabilities at the scored positions, row-major (row 0's tokens first), on the CPU."""
    on = item.batch.to(model_device(model))
    logits = model(
        input_ids=on.input_ids,
        attention_mask=on.attention_mask,
        position_ids=on.position_ids,
        use_cache=False,
        logits_to_keep=item.keep,
    ).logits
    return logits[item.scored.to(logits.device)].float().log_softmax(-1).cpu()


@torch.no_grad()
def completion_token_logprobs(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> list[Float[Tensor, " tokens"]]:
    """log p(token) of every completion token under the model, one tensor per completion."""
    out: list[Tensor] = []
    for item in completion_batches(tok, prompt_ids, completion_ids, batch_size):
        log_probs = scored_log_probs(model, item)
        first = len(out)
        rows = [completion_ids[first + r] for r in range(item.scored.shape[0])]
        targets = torch.tensor([t for row in rows for t in row], dtype=torch.long)
        picked = log_probs.gather(-1, targets[:, None]).squeeze(-1)
        out.extend(picked.split([len(row) for row in rows]))
    return out


def token_kl(
    student_logits: Float[Tensor, "n vocab"],
    ref_logits: Float[Tensor, "n vocab"],
    direction: str = "rev",
) -> Float[Tensor, " n"]:
    """Per-token KL over the vocabulary, from logits (or log-probabilities), in float32."""
    if direction not in DIRECTIONS:
        raise SteerhealError(f"direction={direction!r}: use 'rev' (KL(student‖ref)) or 'fwd' (KL(ref‖student))")
    student = f32(student_logits).log_softmax(-1)
    ref = f32(ref_logits).log_softmax(-1)
    p, log_p, log_q = (student.exp(), student, ref) if direction == "rev" else (ref.exp(), ref, student)
    return (p * (log_p - log_q)).sum(-1).clamp(min=0.0)  # exact KL is >= 0; rounding can dip below


def f32(x: Tensor) -> Tensor:
    """At least float32: half precisions are upcast, float64 stays (gradient checks run in float64)."""
    return x if x.dtype == torch.float64 else x.float()
