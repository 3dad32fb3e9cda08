"""training: one heal round. Pure losses (SFT, ORPO, DPO, token KL aggregates, the barrier), the memory-bounded
scoring path, and `heal`."""

from steerheal.training.heal import HealConfig, HealResult

__all__ = ["HealConfig", "HealResult"]
