"""Pure loss and divergence functions, in float32 whatever the model's dtype.

Conventions (public API): `completion_mask [B, L]` is aligned with `input_ids`: `mask[b, t]` is true when
token t is a completion token (so `mask[:, 0]` is false); the logits at position t − 1 score token t;
logits and ids have the same L. KL directions: `rev` = KL(student ‖ ref) = Σ p_s (log p_s − log p_ref),
`fwd` = KL(ref ‖ student). Sequence aggregates run over the positions that predict completion tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerheal.errors import SteerhealError
from steerheal.lm.scoring import f32, token_kl

AGGREGATES = ("mean", "rmse", "p95", "max")


def predicting_mask(completion_mask: Bool[Tensor, "batch length"]) -> Bool[Tensor, "batch length-1"]:
    """Which of positions 0..L-2 predict a completion token (position t - 1 scores token t); every sequence
    must have one."""
    mask = completion_mask[:, 1:].bool()
    if (mask.sum(-1) == 0).any():
        raise SteerhealError("a sequence has no completion tokens (completion_mask is false after position 0)")
    return mask


def _predicting(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log-probs of positions 0..L-2, the tokens they score, which of them are completion tokens)."""
    if logits.shape[:2] != input_ids.shape or input_ids.shape != completion_mask.shape:
        raise SteerhealError(
            f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and completion_mask "
            f"{tuple(completion_mask.shape)} must share [batch, length]"
        )
    return f32(logits[:, :-1]).log_softmax(-1), input_ids[:, 1:], predicting_mask(completion_mask)


def sequence_logprobs(
    logits: Float[Tensor, "batch length vocab"],
    input_ids: Int[Tensor, "batch length"],
    completion_mask: Bool[Tensor, "batch length"],
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """(sum, mean) of log p(completion token) per sequence; mean = sum / number of completion tokens."""
    log_probs, targets, mask = _predicting(logits, input_ids, completion_mask)
    token = log_probs.gather(-1, targets[..., None]).squeeze(-1) * mask
    total = token.sum(-1)
    return total, total / mask.sum(-1)


def sft_nll(
    logits: Float[Tensor, "batch length vocab"],
    input_ids: Int[Tensor, "batch length"],
    completion_mask: Bool[Tensor, "batch length"],
) -> Float[Tensor, ""]:
    """Mean negative log-likelihood over all completion tokens of the batch (not a mean of means)."""
    log_probs, targets, mask = _predicting(logits, input_ids, completion_mask)
    token = log_probs.gather(-1, targets[..., None]).squeeze(-1)
    return -(token * mask).sum() / mask.sum()


def dpo_loss(
    pi_chosen: Float[Tensor, " batch"],
    pi_rejected: Float[Tensor, " batch"],
    ref_chosen: Float[Tensor, " batch"],
    ref_rejected: Float[Tensor, " batch"],
    beta: float = 0.1,
) -> Float[Tensor, " batch"]:
    """DPO on summed completion log-probs: −log σ(β · ((π_c − ref_c) − (π_r − ref_r)))."""
    margin = (f32(pi_chosen) - f32(ref_chosen)) - (f32(pi_rejected) - f32(ref_rejected))
    return -F.logsigmoid(beta * margin)


def logodds(mean_logprob: Float[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """log(p / (1 − p)) for p = exp(m): m − log(−expm1(m)), stable for m near 0 (m is clamped just below 0,
    where p = 1 would make the odds infinite)."""
    m = f32(mean_logprob)
    m = m.clamp(max=-torch.finfo(m.dtype).tiny)
    return m - torch.log(-torch.expm1(m))


def orpo_loss(
    chosen_mean: Float[Tensor, " batch"],
    rejected_mean: Float[Tensor, " batch"],
    lam: float = 0.1,
) -> Float[Tensor, " batch"]:
    """ORPO's odds-ratio term only: −λ · log σ(logodds(m_c) − logodds(m_r)) on mean completion log-probs."""
    return -lam * F.logsigmoid(logodds(chosen_mean) - logodds(rejected_mean))


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with a zero (not infinite) gradient at 0, so a barrier at D = 0 has finite gradients."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def aggregate_kl(
    kl: Float[Tensor, "batch tokens"],
    mask: Bool[Tensor, "batch tokens"],
    agg: str = "rmse",
) -> Float[Tensor, " batch"]:
    """Per-sequence aggregate of token KLs over masked entries: mean, rmse, p95 (linear interpolation), max."""
    if agg not in AGGREGATES:
        raise SteerhealError(f"agg={agg!r}: use one of {list(AGGREGATES)}")
    mask = mask.bool()
    counts = mask.sum(-1)
    if (counts == 0).any():
        raise SteerhealError("aggregate_kl: a sequence has no masked entries to aggregate")
    kl = f32(kl) * mask
    if agg == "mean":
        return kl.sum(-1) / counts
    if agg == "rmse":
        return _safe_sqrt(kl.square().sum(-1) / counts)
    if agg == "max":
        return kl.masked_fill(~mask, float("-inf")).max(-1).values
    return torch.stack([torch.quantile(row[m], 0.95) for row, m in zip(kl, mask, strict=True)])


def kl_barrier(
    student_logits: Float[Tensor, "batch length vocab"],
    ref_logits: Float[Tensor, "batch length vocab"],
    completion_mask: Bool[Tensor, "batch length"],
    direction: str = "rev",
    agg: str = "rmse",
    tau: float = 1.0,
    lam: float = 0.3,
) -> tuple[Float[Tensor, ""], Float[Tensor, " batch"], float]:
    """(penalty, D, active_fraction): D_b aggregates token KLs over the positions that predict sequence b's
    completion tokens; penalty = mean_b(λ · relu(D_b − τ)); active_fraction = share of sequences with D_b > τ."""
    if student_logits.shape != ref_logits.shape:
        raise SteerhealError(f"student {tuple(student_logits.shape)} and ref {tuple(ref_logits.shape)} logits differ")
    mask = predicting_mask(completion_mask)
    vocab = student_logits.shape[-1]
    kl = token_kl(student_logits[:, :-1].reshape(-1, vocab), ref_logits[:, :-1].reshape(-1, vocab), direction)
    return barrier(aggregate_kl(kl.view(mask.shape), mask, agg), tau, lam)


def barrier(
    divergence: Float[Tensor, " batch"], tau: float, lam: float
) -> tuple[Float[Tensor, ""], Float[Tensor, " batch"], float]:
    """λ · relu(D − τ) averaged over the batch, with D and the share of sequences above τ."""
    return (lam * F.relu(divergence - tau)).mean(), divergence, float((divergence > tau).float().mean())


def lam_schedule(lam: float, round: int, power: float) -> float:
    """The barrier weight of round `round` (0-based): λ · (round + 1) ** power."""
    return lam * (round + 1) ** power
