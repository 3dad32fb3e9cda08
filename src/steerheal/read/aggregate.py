"""Direction methods: from positive and negative activations at one layer to a unit concept direction.

Every method returns the unit direction oriented from negatives to positives and its *separation*: the
mean projection of the positives minus that of the negatives on it (the raw norm kept beside the unit
direction; for `mean_diff` it equals the norm of the mean difference).

- `mean_diff`: mean(pos) − mean(neg). Needs no pairing, so it is written here; steering-vectors'
  `mean_aggregator` subtracts row by row and fails when the two sets differ in size (a corpus concept has
  far more negatives than positives). On paired inputs the two agree (tested).
- `pca`: steering-vectors' `pca_aggregator`, the first principal axis of the paired differences *and
  their negatives*, uncentred. Mirroring the differences makes their mean zero by construction, so the constant shift
  that *is* the concept stays in the data as variance. A centred PCA of the differences subtracts that shift first
  and returns the largest noise axis instead (reported by the public amygdala readout project: cosine 0.03 to a
  planted direction where mean-diff got 0.94; the test plants a concept where centred PCA finds cosine ~0 and this
  finds > 0.9). Needs pairs.
- `logistic`: scikit-learn logistic regression (L2, balanced class weights, intercept fitted) on
  activations centred at the midpoint of the two class means; the coefficient vector, normalised. C is
  chosen by 3-fold cross-validated accuracy over 1e-4..1e2, because a fixed C is a different strength on
  every model (activation norms differ 50x); on separable or imbalanced data ties and near-ties go to the
  stronger penalty, which stays near the class-balanced mean difference rather than a noisy max-margin
  direction. (Balanced accuracy was tried: on all-MiniLM's corpus concepts, 6 positives against 180
  negatives, it picks weaker penalties and reads worse held out, mean AUROC 0.884 against 0.910.)
  steering-vectors' `logistic_aggregator` centres each pair at its own midpoint (needs equal-sized sets)
  and fixes C.
- `logistic_l1`: a relaxed lasso. An L1 fit selects the coordinates, then the L2 fit above on those
  coordinates alone gives the weights. Plain L1 weights are shrunk unequally and lose about a tenth of the
  cosine to a sparse planted direction; the refit removes that. Here C decides *which* coordinates
  survive, so it is chosen differently: by cross-validated *balanced* accuracy, among the C whose model
  keeps a coordinate in every fold. Plain accuracy rewards the empty model that predicts the majority
  class (0.97 for 6 positives against 180 negatives), and ties go to the strongest penalty, so the lasso
  removed every feature of some all-MiniLM concepts.
Both need 3 texts per side for the folds.
- `subspace` (readouts only: it reads every token of a text, `position="all"`): each text's token
  activations `[n_tokens, hidden]` give an uncentred SVD basis of their top `SUBSPACE_RANK` right singular
  vectors, i.e. a projector `P_t` onto the subspace the text occupies (uncentred, for the reason `pca` is:
  the concept is a shift that centring would remove). `D = mean_pos P_t − mean_contrast P_t` is symmetric
  with eigenvalues in [−1, 1]: how much more a direction lies in the positives' subspaces than in the
  contrast set's. The direction is the sum of the top `SUBSPACE_K` eigenvectors weighted by their
  eigenvalues (negative weights clamped to 0), each eigenvector signed to agree with mean(pos) − mean(neg)
  (an eigenvector has no sign of its own); the top `SPECTRUM_SIZE` eigenvalues are kept for the quality
  report. D lives in the span of the texts' bases, so it is diagonalised there (QR of the stacked bases),
  never as a hidden × hidden matrix when the bases span less.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerheal.errors import SteerhealError

METHODS: tuple[str, ...] = ("mean_diff", "pca", "logistic", "logistic_l1")
PAIRED_METHODS = frozenset({"pca"})
TOKEN_METHODS: tuple[str, ...] = ("subspace",)  # read every token of a text; Readout only
SUBSPACE_RANK = 4  # right singular vectors kept per text
SUBSPACE_K = 4  # eigenvectors of D combined into the direction
SPECTRUM_SIZE = 8  # eigenvalues of D kept for the report


# separation / median activation norm below this is float noise, not a concept: the same texts in another
# order give about 1e-7 relative (float32 rounding of the means); a real contrast gives 1e-2 and more
NOISE_SEPARATION = 1e-4


def check_separation(method: str, separation: float, pos: Tensor, neg: Tensor) -> None:
    """Refuse a direction whose separation is float noise relative to the activations' scale."""
    scale = float(torch.cat([pos, neg]).float().norm(dim=-1).median())
    if not separation >= NOISE_SEPARATION * scale:
        raise SteerhealError(
            f"method {method!r}: the positive and negative texts are not separated (separation {separation:.3g} "
            f"against a median activation norm of {scale:.3g}, a ratio below {NOISE_SEPARATION:g}: float noise, "
            "not a direction). Are pos and neg the same texts, perhaps in another order? Give texts that differ in "
            "the concept"
        )


def check_method(method: str, n_pos: int, n_neg: int) -> None:
    if method not in METHODS:
        raise SteerhealError(f"method={method!r}: use one of {list(METHODS)}")
    if method.startswith("logistic") and min(n_pos, n_neg) < MIN_PER_SIDE_FOR_CV:
        raise SteerhealError(
            f"method={method!r} picks its penalty by 3-fold cross-validation and needs at least "
            f"{MIN_PER_SIDE_FOR_CV} texts on each side (got {n_pos} pos, {n_neg} neg); add texts or use mean_diff"
        )
    if method in PAIRED_METHODS and n_pos != n_neg:
        raise SteerhealError(
            f"method={method!r} reads paired differences, so pos and neg must have the same length "
            f"(got {n_pos} and {n_neg}); pair them up, or use mean_diff or logistic for unpaired sets"
        )


LOGISTIC_CS = tuple(10.0**k for k in range(-4, 3))
MIN_PER_SIDE_FOR_CV = 3


def _cross_validated(x: Tensor, y: Tensor, l1: bool) -> Any:
    """LogisticRegressionCV over LOGISTIC_CS, 3 folds, balanced class weights (fitted)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV

    classifier = LogisticRegressionCV(
        Cs=list(LOGISTIC_CS),
        cv=3,
        l1_ratios=[1.0 if l1 else 0.0],
        solver="liblinear" if l1 else "lbfgs",
        class_weight="balanced",
        scoring="balanced_accuracy" if l1 else "accuracy",
        refit=not l1,
        max_iter=2000,
        random_state=0,
    )
    with warnings.catch_warnings():
        # a grid point that stops early is judged by its fold scores like any other
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9 announces an attribute rename
        classifier.fit(x.double().numpy(), y.numpy())
    return classifier


def _l1_support(x: Tensor, y: Tensor) -> Tensor:
    """The coordinates an L1 fit keeps at the best C (balanced accuracy) among those that keep one in every
    fold; empty when no C of the grid keeps any."""
    from sklearn.linear_model import LogisticRegression

    cv = _cross_validated(x, y, l1=True)
    label = next(iter(cv.scores_))  # binary: one entry, for the positive class
    n_cs = len(LOGISTIC_CS)
    scores = np.asarray(cv.scores_[label]).reshape(-1, n_cs).mean(0)
    weights = np.asarray(cv.coefs_paths_[label]).reshape(-1, n_cs, cv.coefs_paths_[label].shape[-1])
    keeps = (weights[..., : x.shape[1]] != 0).any(-1).all(0)
    if not keeps.any():
        return torch.zeros(0, dtype=torch.long)
    candidates = np.flatnonzero(keeps)
    best = candidates[int(np.argmax(scores[candidates]))]  # first maximum: ties go to the stronger penalty
    fit = LogisticRegression(
        C=LOGISTIC_CS[best], l1_ratio=1.0, solver="liblinear", class_weight="balanced", max_iter=2000
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and scikit-learn 1.9's penalty/l1_ratio notices
        fit.fit(x.double().numpy(), y.numpy())
    return torch.from_numpy(np.flatnonzero(fit.coef_[0]))


def _logistic(pos: Tensor, neg: Tensor, l1: bool) -> Tensor:
    midpoint = (pos.mean(0) + neg.mean(0)) / 2
    x = torch.cat([pos, neg]) - midpoint
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    if not l1:
        return torch.from_numpy(_cross_validated(x, y, l1=False).coef_[0]).float()
    support = _l1_support(x, y)
    weights = torch.zeros(x.shape[1])
    if len(support):
        weights[support] = torch.from_numpy(_cross_validated(x[:, support], y, l1=False).coef_[0]).float()
    return weights


def _pca(pos: Tensor, neg: Tensor) -> Tensor:
    from steering_vectors import pca_aggregator

    return pca_aggregator()(pos, neg)


def direction(
    method: str,
    pos: Float[Tensor, "n_pos hidden"],
    neg: Float[Tensor, "n_neg hidden"],
) -> tuple[Float[Tensor, " hidden"], float]:
    """(unit direction, separation > 0) for one layer's float32 activations."""
    check_method(method, len(pos), len(neg))
    pos, neg = pos.float(), neg.float()
    if method == "mean_diff":
        raw = pos.mean(0) - neg.mean(0)
    elif method == "pca":
        raw = _pca(pos, neg)
    else:
        raw = _logistic(pos, neg, l1=method == "logistic_l1")
    norm = raw.norm()
    if not torch.isfinite(raw).all() or norm == 0:
        raise SteerhealError(
            f"method {method!r} found no direction (zero or non-finite): are the positive and negative "
            "texts identical, or (logistic_l1) did the penalty remove every feature?"
        )
    unit = raw / norm
    separation = float(pos.mean(0) @ unit - neg.mean(0) @ unit)
    if separation < 0:
        unit, separation = -unit, -separation
    check_separation(method, separation, pos, neg)
    return unit, separation


def text_basis(tokens: Float[Tensor, "tokens hidden"], rank: int = SUBSPACE_RANK) -> Float[Tensor, "hidden r"]:
    """Orthonormal columns spanning a text's top `rank` uncentred singular directions (float32; SVD in
    float32 because half-precision SVD is unsupported). Numerically null directions are dropped."""
    _, s, vh = torch.linalg.svd(tokens.float(), full_matrices=False)
    keep = int(min(rank, int((s > s[0] * 1e-6).sum()))) if len(s) and s[0] > 0 else 0
    if keep == 0:
        raise SteerhealError("a text's token activations are all zero; the subspace method cannot read it")
    return vh[:keep].T.contiguous()


def subspace(
    pos_bases: list[Float[Tensor, "hidden _"]],
    neg_bases: list[Float[Tensor, "hidden _"]],
    pos: Float[Tensor, "n_pos hidden"],
    neg: Float[Tensor, "n_neg hidden"],
    k: int = SUBSPACE_K,
) -> tuple[Float[Tensor, " hidden"], float, Float[Tensor, " spectrum"]]:
    """(unit direction, separation >= 0, top eigenvalues of D) from per-text bases and pooled means.

    `pos` and `neg` are the texts' mean activations: they orient the eigenvectors and measure the
    separation, as for every other method.
    """
    if not pos_bases or not neg_bases:
        raise SteerhealError("subspace needs at least one positive and one contrast text")
    if k < 1:
        raise SteerhealError(f"subspace: k={k} must be at least 1")
    a, b = torch.cat(pos_bases, dim=1), torch.cat(neg_bases, dim=1)
    stacked = torch.cat([a, b], dim=1)
    hidden = stacked.shape[0]
    if stacked.shape[1] >= hidden:  # the bases span (nearly) everything: work in the hidden space itself
        q = torch.eye(hidden)
    else:
        q, _ = torch.linalg.qr(stacked)
    ca, cb = q.T @ a, q.T @ b
    d = ca @ ca.T / len(pos_bases) - cb @ cb.T / len(neg_bases)
    values, vectors = torch.linalg.eigh((d + d.T) / 2)  # ascending
    values, vectors = values.flip(0), (q @ vectors).flip(1)
    spectrum = torch.zeros(SPECTRUM_SIZE)
    spectrum[: min(SPECTRUM_SIZE, len(values))] = values[:SPECTRUM_SIZE]  # D is 0 outside the bases' span
    weights = values[:k].clamp(min=0)
    if not (weights > 0).any():
        raise SteerhealError(
            "subspace found no direction: no eigenvalue of D is positive, so no direction lies more in the "
            "positives' subspaces than in the contrast set's (are the positive and contrast texts alike?)"
        )
    shift = pos.float().mean(0) - neg.float().mean(0)
    signs = torch.where(shift @ vectors[:, :k] < 0, -1.0, 1.0)
    raw = vectors[:, :k] @ (weights * signs)
    unit = raw / raw.norm()
    separation = float(shift @ unit)
    if separation < 0:
        unit, separation = -unit, -separation
    check_separation("subspace", separation, pos, neg)
    return unit, separation, spectrum
