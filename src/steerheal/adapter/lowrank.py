"""Sums of scaled LoRA products `Σ_k w_k · B_k A_k`, kept as low-rank factors: concatenated or truncated.

Concatenating the factors (`A` stacked by rows, each `B_k` scaled by its weight and stacked by columns)
is exact: the product of the stacks is the sum. Its rank is the sum of the ranks, so the cost of a
forward still grows with every round. The truncated SVD gets the rank back down at a measured price;
it never forms the dense `out × in` matrix: a QR of each stack leaves a `R × R` core whose SVD is the
SVD of the sum, and the discarded singular values give its Frobenius error exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def weighted_concat(
    factors: Sequence[tuple[Tensor, Tensor]], weights: Sequence[float]
) -> tuple[Float[Tensor, "total in_features"], Float[Tensor, "out_features total"]]:
    """(A_cat, B_cat) with B_cat @ A_cat = Σ_k weights[k] · B_k @ A_k, in float32."""
    a_cat = torch.cat([a.float() for a, _ in factors], dim=0)
    b_cat = torch.cat([b.float() * float(w) for (_, b), w in zip(factors, weights, strict=True)], dim=1)
    return a_cat, b_cat


def dense_delta(
    a: Float[Tensor, "rank in_features"], b: Float[Tensor, "out_features rank"]
) -> Float[Tensor, "out_features in_features"]:
    return b.float() @ a.float()


def truncated_svd(
    a: Float[Tensor, "total in_features"], b: Float[Tensor, "out_features total"], rank: int
) -> tuple[Float[Tensor, "rank in_features"], Float[Tensor, "out_features rank"], float, float]:
    """Best rank-`rank` factors of `b @ a` (Eckart-Young) and the squared Frobenius norms of what was cut
    and of the whole product. Computed in float64, returned in float32, split as U√S and √S Vᵀ. Where the
    product has fewer than `rank` singular values the factors are padded with zeros (nothing is cut)."""
    a64, b64 = a.double(), b.double()
    q_b, r_b = torch.linalg.qr(b64)  # b = q_b r_b
    q_a, r_a = torch.linalg.qr(a64.T)  # aᵀ = q_a r_a
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)  # b a = q_b u diag(s) vh q_aᵀ
    keep = min(rank, s.shape[0])
    root = s[:keep].sqrt()
    new_b = (q_b @ u[:, :keep]) * root
    new_a = root[:, None] * (vh[:keep] @ q_a.T)
    if keep < rank:
        new_b = torch.cat([new_b, new_b.new_zeros(new_b.shape[0], rank - keep)], dim=1)
        new_a = torch.cat([new_a, new_a.new_zeros(rank - keep, new_a.shape[1])], dim=0)
    cut, total = float((s[keep:] ** 2).sum()), float((s**2).sum())
    return new_a.float(), new_b.float(), cut, total
