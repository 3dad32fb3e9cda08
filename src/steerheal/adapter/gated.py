"""GatedLoRA: distilled rounds kept as peft LoRA adapters on one base, each scaled by its own gate.

Every round of the loop trains a fresh LoRA adapter (`round_0`, `round_1`, …) on top of the frozen
history of earlier rounds. A round's *gate* is a scalar folded into peft's per-adapter `scaling`
(`gate · alpha / r`), so LoRA adds `gate · alpha/r · B A x` to the layer's output. With every gate at 0 the
model computes `base(x) + 0`, which is the base's output bit for bit (the LoRA factors are finite), so the
base and the previous student are references *inside* the student: no second model, and switching is a
few hundred dict assignments (`reference("base")`, `reference("prev")`).

Only the current round ever trains. peft marks every adapter it activates trainable, so after each
activation the history is frozen again and `trainable_parameters()` hands the optimizer the current
round's factors and nothing else. Adapter weights are float32 whatever the base's precision (a bf16 or
4-bit base included), as QLoRA needs.

Rounds leave the model by `save` (peft's format plus `gated.json`, `save_and_load.py`), `export_peft` (one plain
peft adapter) and `bake` (a dense float32 merge), both in `export.py`. `dial(g)` scales every trained gate
(`dial.py`). A Bank (`bank.py`) holds several concepts' groups of rounds on one peft model, one dial each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from steerheal.adapter import export, save_and_load
from steerheal.adapter.dial import Dial, _DialState
from steerheal.adapter.lowrank import dense_delta, truncated_svd, weighted_concat
from steerheal.adapter.round import Round, check_gate, check_rank, round_name
from steerheal.adapter.targets import attach_plan
from steerheal.boundary import check_methods, checked
from steerheal.errors import SteerhealError
from steerheal.lm.blocks import unwrap
from steerheal.lm.fingerprint import Fingerprint, fingerprint
from steerheal.log import logger, quiet_bitsandbytes

REFERENCES: tuple[str, ...] = ("base", "prev")
COLLAPSE_METHODS: tuple[str, ...] = ("cat", "svd")


class GatedLoRA:
    """Gated LoRA rounds on one base model (changed in place). Build it with `attach` or `load`."""

    def __init__(
        self,
        model: nn.Module,
        r: int,
        alpha: float,
        target_modules: list[str] | None,
        depth_band: tuple[float, float],
        target_names: list[str],
        fan_in_fan_out: bool,
        seed: int,
    ) -> None:
        self.model: PreTrainedModel = unwrap(model)
        self.peft_model: Any = None
        self.r, self.alpha, self.seed = r, float(alpha), seed
        self.target_modules, self.depth_band = target_modules, depth_band
        self.target_names, self.fan_in_fan_out = target_names, fan_in_fan_out
        self.fingerprint: Fingerprint = fingerprint(self.model)
        self.history: list[Round] = []
        self.current: Round | None = None
        self.last_bake_report: dict[str, Any] | None = None
        self._layers: dict[str, Any] = {}
        self.prefix = ""  # a bank's concept group: peft names its rounds `<prefix><round>` (bank.py)
        self.bank: Any = None  # the Bank whose other groups share this peft model, or None

    def __repr__(self) -> str:
        hist = ", ".join(f"{r.name}@{r.gate:g}" for r in self.history) or "none"
        cur = f"{self.current.name}@{self.current.gate:g}" if self.current else "none"
        n = len(self.target_names)
        return f"GatedLoRA({self.prefix}r={self.r}, alpha={self.alpha:g}, modules={n}, history=[{hist}], current={cur})"

    # ------------------------------------------------------------------ building
    @classmethod
    def attach(
        cls,
        model: nn.Module,
        r: int = 8,
        alpha: float = 16,
        target_modules: str | Sequence[str] | None = None,
        depth_band: Sequence[float] = (0.2, 0.8),
        seed: int = 0,
    ) -> GatedLoRA:
        """Start `round_0` (zero-initialised: the model's output is unchanged) on `model`, in place.

        Targets: every linear layer (or those whose name matches a pattern of `target_modules`) of the
        blocks whose centre lies in `depth_band` (block i of n iff band[0] <= (i + 0.5)/n < band[1]).
        `seed` makes each round's random A factor reproducible without touching the global RNG.
        """
        patterns, band, names, fan_in_fan_out = attach_plan(model, r, alpha, target_modules, depth_band)
        handle = cls(model, r, alpha, patterns, band, names, fan_in_fan_out, seed)
        return handle._start()

    def _start(self) -> GatedLoRA:
        """Add the zero-initialised `round_0` (the model's output is unchanged)."""
        self.current = Round("round_0", self.r, self.alpha, 1.0, 0, 0)
        self._add_adapter(self.current)
        logger.info(f"GatedLoRA {self.prefix}attached: r={self.r}, {len(self.target_names)} modules, {self.depth_band}")
        return self

    def key(self, rnd: Round) -> str:
        """The peft adapter name of a round of this group (its name, after the bank's concept prefix)."""
        return self.prefix + rnd.name

    def _groups(self) -> list[GatedLoRA]:  # every group on this peft model
        return list(self.bank.views.values()) if self.bank is not None else [self]

    def _add_adapter(self, rnd: Round, weights: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
        """Create the peft adapter for `rnd` (already entered in history/current), fp32, then activate."""
        with quiet_bitsandbytes():  # peft imports bitsandbytes
            from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=rnd.rank,
            lora_alpha=rnd.alpha,
            target_modules=list(self.target_names),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            fan_in_fan_out=self.fan_in_fan_out,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100_003 + rnd.first)
            if self.peft_model is None:
                self.peft_model = get_peft_model(self.model, config, adapter_name=self.key(rnd))
            else:
                self.peft_model.add_adapter(self.key(rnd), config)
        self._layers = {name: self.model.get_submodule(name) for name in self.target_names}
        key = self.key(rnd)
        for name, layer in self._layers.items():
            layer.lora_A[key].to(torch.float32)
            layer.lora_B[key].to(torch.float32)
            if weights is not None:
                a, b = weights[name]
                with torch.no_grad():
                    layer.lora_A[key].weight.copy_(a)
                    layer.lora_B[key].weight.copy_(b)
        self._activate()

    def _activate(self) -> None:
        """Every round active (in order), then the history frozen again: peft's activation marks all
        the rounds it activates trainable (peft 0.21's `set_adapter`, tested), and only the current round may train.
        In a bank every group's rounds are active and only this group's current round trains."""
        groups = self._groups()
        self.peft_model.base_model.set_adapter([g.key(r) for g in groups for r in g.rounds])
        keep = {id(p) for p in self.trainable_parameters()}
        for param in self.peft_model.parameters():
            param.requires_grad_(id(param) in keep)
        for group in groups:
            group._apply_gates()

    def _apply_gates(self) -> None:
        for layer in self._layers.values():
            for rnd in self.rounds:
                layer.scaling[self.key(rnd)] = rnd.gate * rnd.scale

    # ------------------------------------------------------------------ rounds and gates
    @property
    def rounds(self) -> list[Round]:
        """History rounds (oldest first), then the current round."""
        return [*self.history, *([self.current] if self.current is not None else [])]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The current round's A and B factors, module by module: what the optimizer gets."""
        if self.current is None:
            return []
        name = self.key(self.current)
        return [p for layer in self._layers.values() for p in (layer.lora_A[name].weight, layer.lora_B[name].weight)]

    def _parse_gates(self, history: float | Sequence[float], current: float, what: str) -> tuple[list[float], float]:
        n = len(self.history)
        if isinstance(history, int | float) and not isinstance(history, bool):
            hist = [check_gate(history, f"{what}: history")] * n
        else:
            values = list(history)
            if len(values) != n:
                raise SteerhealError(
                    f"{what}: history has {len(values)} gates but there are {n} history rounds "
                    f"{[r.name for r in self.history]}; pass one gate per history round, or one number for all"
                )
            hist = [check_gate(v, f"{what}: history[{i}]") for i, v in enumerate(values)]
        return hist, check_gate(current, f"{what}: current")

    def set_gates(self, history: float | Sequence[float] = 1.0, current: float = 1.0) -> None:
        """Set the gates until changed (`gates(...)` sets them for a block of code only)."""
        hist, cur = self._parse_gates(history, current, "set_gates")
        for rnd, gate in zip(self.history, hist, strict=True):
            rnd.gate = gate
        if self.current is not None:
            self.current.gate = cur
        self._apply_gates()

    @contextmanager
    def gates(self, history: float | Sequence[float] = 1.0, current: float = 1.0) -> Iterator[GatedLoRA]:
        """Within the block the history rounds (one scalar, or one gate each) and the current round run at
        these gates; the previous gates come back on exit, also on an exception."""
        hist, cur = self._parse_gates(history, current, "gates")
        saved = {r.name: r.gate for r in self.rounds}
        try:
            self.set_gates(hist, cur)
            yield self
        finally:
            for rnd in self.rounds:
                rnd.gate = saved.get(rnd.name, rnd.gate)
            self._apply_gates()

    def dial(self, g: float) -> Dial:
        """Scale every round's trained gate by `g`: 0 = the base bit for bit, 1 = the student as trained,
        2 = twice its delta. Both a setter and a context manager:

            adapter.dial(0.5)            # stays until changed
            with adapter.dial(0.5): ...  # the gates before the call come back on exit, also on an exception

        The dial scales the *undialled* gates, not the dialled ones: `dial(a)` then `dial(b)` is `dial(b)`
        (never a·b), so `dial(0)` is undone by `dial(1)`, which restores the trained gates exactly
        (x · 1.0 == x). Nested contexts likewise: the inner one's g applies, and each exit restores the
        gates its own call found. The undialled gates are the ones in force at the first `dial` call;
        changing gates otherwise (`set_gates`, `fold`) makes the gates then in force the new undialled ones.
        Each module's added output is g times the student's (up to float32 rounding of the product).
        """
        return Dial(self, check_gate(g, "dial"))

    @property
    def dial_value(self) -> float:
        """The dial in force (1.0 when none is, or when gates were changed otherwise since)."""
        state: _DialState | None = getattr(self, "_dial_state", None)
        return state.g if state is not None and state.dialled == self._gate_map() else 1.0

    def _gate_map(self) -> dict[str, float]:
        return {r.name: r.gate for r in self.rounds}

    def _set_gate_map(self, gates: dict[str, float]) -> None:
        for rnd in self.rounds:
            rnd.gate = gates.get(rnd.name, rnd.gate)
        self._apply_gates()

    @contextmanager
    def reference(self, which: str) -> Iterator[GatedLoRA]:
        """`"base"`: every gate 0, the base model bit for bit. `"prev"`: the history at its gates and the
        current round off, the previous student. For KL references inside the training model: wrap in
        `torch.no_grad()`; nothing is copied."""
        if which not in REFERENCES:
            raise SteerhealError(f"reference {which!r} is unknown; use one of {list(REFERENCES)}")
        history: float | list[float] = 0.0 if which == "base" else [r.gate for r in self.history]
        with self.gates(history=history, current=0.0):
            yield self

    def fold(self) -> Round:
        """The current round joins the history (frozen, keeping its gate); a fresh zero-initialised round
        starts and becomes the only trainable one. Returns the new round."""
        if self.current is None:
            raise SteerhealError("this GatedLoRA has no current round to fold")
        if not self._trained(self.current):
            logger.warning(f"folding {self.current.name}, whose B factors are all zero: it adds nothing to the model")
        self.history.append(self.current)
        index = self.current.last + 1
        self.current = Round(round_name(index, index), self.r, self.alpha, 1.0, index, index)
        self._add_adapter(self.current)
        logger.info(f"folded {self.history[-1].name} into the history; {self.current.name} trains now")
        return self.current

    def _factors(self, rnd: Round, module: str) -> tuple[Tensor, Tensor]:
        layer, key = self._layers[module], self.key(rnd)
        return layer.lora_A[key].weight.detach(), layer.lora_B[key].weight.detach()

    def collapse_history(self, method: str = "cat", rank: int | None = None) -> dict[str, Any]:
        """Replace the history rounds by one adapter with their gates folded in (gate 1 afterwards).

        `cat` concatenates the factors: exact (up to float rounding), rank = the sum of their ranks.
        `svd` truncates that sum to `rank` (default: r) per module, and reports the relative Frobenius
        error it introduced (over all modules, and the worst module).
        """
        if method not in COLLAPSE_METHODS:
            raise SteerhealError(f"collapse method {method!r} is unknown; use one of {list(COLLAPSE_METHODS)}")
        if method == "cat" and rank is not None:
            raise SteerhealError("collapse_history('cat') keeps every factor, so its rank is fixed; rank= is for 'svd'")
        if method == "svd":
            rank = check_rank(self.r if rank is None else rank, "rank")
        if not self.history:
            raise SteerhealError("collapse_history: there is no history to collapse; fold() a trained round first")
        old = self.history
        weights = [r.gate * r.scale for r in old]
        new: dict[str, tuple[Tensor, Tensor]] = {}
        cut2 = total2 = worst = 0.0
        worst_module = None
        for module in self.target_names:
            a, b = weighted_concat([self._factors(r, module) for r in old], weights)
            if method == "svd":
                a, b, cut, total = truncated_svd(a, b, int(rank))  # type: ignore[arg-type]
                cut2, total2 = cut2 + cut, total2 + total
                if total > 0 and math.sqrt(cut / total) > worst:
                    worst, worst_module = math.sqrt(cut / total), module
            new[module] = (a, b)
        new_rank = int(next(iter(new.values()))[0].shape[0])
        collapsed = Round(
            round_name(old[0].first, old[-1].last), new_rank, float(new_rank), 1.0, old[0].first, old[-1].last
        )
        self.history = []
        self._activate()  # only the current round active, so deleting the old ones changes nothing else
        for rnd in old:
            self.peft_model.delete_adapter(self.key(rnd))
        self.history = [collapsed]
        self._add_adapter(collapsed, new)
        report = {
            "method": method,
            "rounds": [r.name for r in old],
            "into": collapsed.name,
            "rank": new_rank,
            "relative_error": math.sqrt(cut2 / total2) if total2 > 0 else 0.0,
            "worst_module": worst_module,
            "worst_relative_error": worst,
        }
        error = "exact up to float rounding" if method == "cat" else f"relative error {report['relative_error']:.3g}"
        logger.info(f"collapsed {report['rounds']} into {collapsed.name} ({method}, rank {new_rank}): {error}")
        return report

    # ------------------------------------------------------------------ export and bake
    def _trained(self, rnd: Round) -> bool:
        return any(bool(layer.lora_B[self.key(rnd)].weight.detach().any()) for layer in self._layers.values())

    def _contributing(self, history: float | Sequence[float], current: float, what: str) -> list[tuple[Round, float]]:
        """(round, gate) for every round that adds something at these gates: gate not 0, and for the
        current round, trained (a fresh round's B is zero). Leaving the others out is exact."""
        hist, cur = self._parse_gates(history, current, what)
        parts = [(r, g) for r, g in zip(self.history, hist, strict=True) if g != 0]
        if self.current is not None and cur != 0 and self._trained(self.current):
            parts.append((self.current, cur))
        return parts

    def export_peft(
        self,
        directory: str | Path,
        history: float | Sequence[float] = 1.0,
        current: float = 1.0,
        overwrite: bool = False,
    ) -> Path:
        """One standard peft LoRA adapter (`PeftModel.from_pretrained(base, directory)`) equal to the student at
        these gates: every round's factors concatenated, each B scaled by gate · alpha / r, lora_alpha = r.
        A non-empty `directory` that is not a previous export is refused unless `overwrite`."""
        return export.export_peft(self, directory, history, current, overwrite)

    def deltas(self, history: float | Sequence[float] = 1.0, current: float = 1.0) -> dict[str, Tensor]:
        """Σ gate · alpha/r · B A per targeted module in float32, in the layout of the module's weight
        (empty when no round contributes at these gates)."""
        return self._deltas(self._contributing(history, current, "deltas"))

    def _deltas(self, parts: list[tuple[Round, float]]) -> dict[str, Tensor]:
        out = {}
        for module in self.target_names if parts else []:
            delta = sum(dense_delta(*self._factors(r, module)) * (g * r.scale) for r, g in parts)
            out[module] = delta.T if self.fan_in_fan_out else delta
        return out

    def bake(
        self,
        dtype: torch.dtype = torch.float32,
        history: float | Sequence[float] = 1.0,
        current: float = 1.0,
        device: str = "cpu",
    ) -> PreTrainedModel:
        """A new dense model equal to the student at these gates, with no adapters and no quantisation.

        4-bit weights are de-quantised and every merge is done in float32; `dtype` below float32 casts the
        sum at the end, and the rounding it made (relative to the adapters' own deltas) is logged and kept
        in `last_bake_report`. The base and its adapters are left as they were.
        """
        return export.bake(self, dtype, history, current, device)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Each round in peft's format (`<dir>/<round>/`), then `gated.json` last: a save is complete only
        when `gated.json` exists. Round folders of an earlier save that are no longer rounds are removed."""
        return save_and_load.save_rounds(self, directory)

    @classmethod
    @checked
    def load(cls, model: nn.Module, directory: str | Path) -> GatedLoRA:
        """Attach the rounds saved in `directory` to `model` (in place), gates and all.

        The base must be the model they were trained on: an identity difference (name, architecture,
        sizes) is an error; a precision difference (a 4-bit base against a bf16 one) is a logged warning.
        """
        return save_and_load.load_rounds(cls, model, directory)


check_methods(GatedLoRA)
