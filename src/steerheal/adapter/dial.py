"""The dial: every round's trained gate times g (0 = the base bit for bit, 1 = the student, 2 = twice its delta)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steerheal.adapter.gated import GatedLoRA


@dataclass(frozen=True)
class _DialState:
    g: float
    undialled: dict[str, float]  # round name -> gate before any dial
    dialled: dict[str, float]  # round name -> gate the dial set (to tell whether someone changed them since)


class Dial:
    """`GatedLoRA.dial(g)`: applied when made; as a context manager, undone on exit."""

    def __init__(self, adapter: GatedLoRA, g: float) -> None:
        self.adapter, self.g = adapter, g
        self._before = adapter._gate_map()
        self._state_before: _DialState | None = getattr(adapter, "_dial_state", None)
        state = self._state_before
        undialled = state.undialled if state is not None and state.dialled == self._before else self._before
        dialled = {name: gate * g for name, gate in undialled.items()}
        adapter._set_gate_map(dialled)
        adapter._dial_state = _DialState(g, dict(undialled), dialled)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Dial(g={self.g:g})"

    def __enter__(self) -> GatedLoRA:
        return self.adapter

    def __exit__(self, *exc: object) -> None:
        self.adapter._set_gate_map(self._before)
        self.adapter._dial_state = self._state_before  # type: ignore[attr-defined]


def undialled_gates(adapter: GatedLoRA) -> dict[str, float]:
    """Round name -> gate as trained (before any dial in force; the gates in force when none is)."""
    state: _DialState | None = getattr(adapter, "_dial_state", None)
    gates = adapter._gate_map()
    return dict(state.undialled) if state is not None and state.dialled == gates else gates
