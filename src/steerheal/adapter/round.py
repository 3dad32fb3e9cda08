"""A round of the stack: one peft adapter's rank, alpha and gate, and which trained rounds it holds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from steerheal.errors import SteerhealError


@dataclass
class Round:
    """One peft adapter of the stack: its rank, alpha and gate, and which trained rounds it holds
    (`first == last` for a round as trained; a collapsed history holds several)."""

    name: str
    rank: int
    alpha: float
    gate: float
    first: int
    last: int

    @property
    def scale(self) -> float:
        """peft's scaling at gate 1."""
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, data: Any, what: str) -> Round:
        fields = ("name", "rank", "alpha", "gate", "first", "last")
        if not isinstance(data, dict) or set(data) != set(fields):
            raise SteerhealError(f"{what}: a round entry must have exactly {list(fields)}, got {data!r}")
        return cls(
            str(data["name"]),
            int(data["rank"]),
            float(data["alpha"]),
            float(data["gate"]),
            int(data["first"]),
            int(data["last"]),
        )


def round_name(first: int, last: int) -> str:
    return f"round_{first}" if first == last else f"round_{first}_to_{last}"


def group_prefix(concept: str | None) -> str:
    """The peft adapter names of a bank concept's rounds start with this (`joy__round_0`); "" outside a bank."""
    return "" if concept is None else f"{concept}__"


def check_gate(value: float, what: str) -> float:
    """A gate is a finite real number (0 = the round is off, 1 = as trained)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SteerhealError(f"{what}={value!r} is not a number; a gate is a finite float (0 = off, 1 = as trained)")
    if not math.isfinite(value):
        raise SteerhealError(f"{what}={value} is not finite; a gate is a finite float (0 = off, 1 = as trained)")
    return float(value)


def check_rank(rank: int, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise SteerhealError(f"{what}={rank!r}: a LoRA rank is a positive integer (8 to 64 are usual)")
    return rank
