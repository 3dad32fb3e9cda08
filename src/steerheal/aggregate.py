"""Direction methods: from positive and negative activations at one layer to a unit concept direction.

Every method returns the unit direction oriented from negatives to positives and its *separation*: the
mean projection of the positives minus that of the negatives on it (the raw norm kept beside the unit
direction; for `mean_diff` it equals the norm of the mean difference).

- `mean_diff`: mean(pos) − mean(neg). Needs no pairing, so it is written here; steering-vectors'
  `mean_aggregator` subtracts row by row and fails when the two sets differ in size (a corpus concept has
  far more negatives than positives). On paired inputs the two agree (tested).
- `pca`: steering-vectors' `pca_aggregator`, the first principal axis of the paired differences *and
  their negatives*, uncentred. Mirroring the differences makes their mean zero by construction, so the
  constant shift that *is* the concept stays in the data as variance. A centred PCA of the differences
  subtracts that shift first and returns the largest noise axis instead (prior-art pitfall 7; the test
  plants a concept where centred PCA finds cosine ~0 and this finds > 0.9). Needs pairs.
- `logistic`: scikit-learn logistic regression (L2, balanced class weights, intercept fitted) on
  activations centred at the midpoint of the two class means; the coefficient vector, normalised. C is
  chosen by 3-fold cross-validated accuracy over 1e-4..1e2, because a fixed C is a different strength on
  every model (activation norms differ 50x); on separable data ties go to the stronger penalty, which
  stays near the mean difference rather than a noisy max-margin direction. steering-vectors'
  `logistic_aggregator` centres each pair at its own midpoint (needs equal-sized sets) and fixes C.
- `logistic_l1`: a relaxed lasso. An L1 fit (C by the same cross-validation) selects the coordinates,
  then the L2 fit above on those coordinates alone gives the weights. Plain L1 weights are shrunk
  unequally and lose about a tenth of the cosine to a sparse planted direction; the refit removes that.
Both need 3 texts per side for the folds.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from steerheal.errors import SteerhealError

METHODS: tuple[str, ...] = ("mean_diff", "pca", "logistic", "logistic_l1")
PAIRED_METHODS = frozenset({"pca"})


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


def _fit_logistic(x: Tensor, y: Tensor, l1: bool) -> Tensor:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV

    classifier = LogisticRegressionCV(
        Cs=list(LOGISTIC_CS),
        cv=3,
        l1_ratios=[1.0 if l1 else 0.0],
        solver="liblinear" if l1 else "lbfgs",
        class_weight="balanced",
        max_iter=2000,
        random_state=0,
    )
    with warnings.catch_warnings():
        # a grid point that stops early is judged by its fold scores like any other
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9 announces an attribute rename
        classifier.fit(x.double().numpy(), y.numpy())
    return torch.from_numpy(classifier.coef_[0]).float()


def _logistic(pos: Tensor, neg: Tensor, l1: bool) -> Tensor:
    midpoint = (pos.mean(0) + neg.mean(0)) / 2
    x = torch.cat([pos, neg]) - midpoint
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    if not l1:
        return _fit_logistic(x, y, l1=False)
    support = _fit_logistic(x, y, l1=True).nonzero().squeeze(-1)
    weights = torch.zeros(x.shape[1])
    if len(support):
        weights[support] = _fit_logistic(x[:, support], y, l1=False)
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
    return unit, separation
