"""DoseConfig: how each round's dose is found (iso-KL calibration) and walked down (the dose walk).

The dose stage takes it whole: `calibrate_dose` and `dose_walk` read their options from it, so a new option is
added here and nowhere else. `RunConfig.dose` is one (`--dose.target-kl`, ... on the command line).
"""

from __future__ import annotations

from dataclasses import dataclass

from steerheal.boundary import check_methods


@dataclass(frozen=True)
class DoseConfig:
    """iso-KL calibration and the dose walk, re-done every round on the current student."""

    target_kl: float = 1.0
    """p95 of per-token KL(steered ‖ unsteered) in nats at the calibrated dose c* (round 0)."""
    round_decay: float = 1.0
    """Round k calibrates to target_kl * round_decay ** k: later rounds steer a student that already carries
    the trait, and the same target would push its data ever further (a cumulative budget: earlier projects
    spent about 1.7 nats over all rounds)."""
    stat: str = "p95"
    n_tokens: int = 20
    tol: float = 0.05
    n_prompts: int = 16
    liveness_samples: int = 16
    alpha: float = 1.0
    """Dose of the pairs as a multiple of c*; lowered by the walk when too few pairs survive."""
    alpha_min: float = 0.25
    walk_factor: float = 0.7
    keep_target: float = 0.5
    probe_size: int = 16

    def target(self, round: int) -> float:
        """The target KL of round `round` (0-based): target_kl · round_decay ** round."""
        return self.target_kl * self.round_decay**round


check_methods(DoseConfig, init=True)
