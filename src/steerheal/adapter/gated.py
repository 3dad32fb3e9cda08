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

Rounds leave the model three ways: `save` (each round in peft's own format plus `gated.json`),
`export_peft` (one standard peft adapter: the rounds' factors concatenated, gates folded into B), and
`bake` (a dense merged model; 4-bit weights de-quantised and merged in float32, `bake.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from torch import Tensor, nn
from transformers import PreTrainedModel

from steerheal.adapter.bake import merge_dense
from steerheal.adapter.lowrank import dense_delta, truncated_svd, weighted_concat
from steerheal.adapter.peft_files import lora_keys, read_config, read_weights, write_adapter
from steerheal.adapter.targets import check_band, linear_kind, select_targets
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, provenance, read_json
from steerheal.lm.blocks import unwrap
from steerheal.lm.fingerprint import Fingerprint, fingerprint, quantization

FORMAT_VERSION = 1
META_FILE = "gated.json"
EXPORT_META_FILE = "steerheal_export.json"
KIND = "steerheal.gated_lora"
REFERENCES: tuple[str, ...] = ("base", "prev")
COLLAPSE_METHODS: tuple[str, ...] = ("cat", "svd")


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


def _round_name(first: int, last: int) -> str:
    return f"round_{first}" if first == last else f"round_{first}_to_{last}"


def check_gate(value: float, what: str) -> float:
    """A gate is a finite real number (0 = the round is off, 1 = as trained)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SteerhealError(f"{what}={value!r} is not a number; a gate is a finite float (0 = off, 1 = as trained)")
    if not math.isfinite(value):
        raise SteerhealError(f"{what}={value} is not finite; a gate is a finite float (0 = off, 1 = as trained)")
    return float(value)


def _check_rank(rank: int, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise SteerhealError(f"{what}={rank!r}: a LoRA rank is a positive integer (8 to 64 are usual)")
    return rank


def _check_unadapted(model: nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    inner = unwrap(model)
    if hasattr(inner, "peft_config") or any(isinstance(m, BaseTunerLayer) for m in inner.modules()):
        raise SteerhealError(
            f"this {type(inner).__name__} already carries peft adapters; attach or load a GatedLoRA onto a model "
            "without any (reload the base, or keep using the GatedLoRA that is already attached)"
        )


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

    def __repr__(self) -> str:
        hist = ", ".join(f"{r.name}@{r.gate:g}" for r in self.history) or "none"
        cur = f"{self.current.name}@{self.current.gate:g}" if self.current else "none"
        modules = len(self.target_names)
        return f"GatedLoRA(r={self.r}, alpha={self.alpha:g}, modules={modules}, history=[{hist}], current={cur})"

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
        _check_rank(r, "r")
        if not math.isfinite(alpha) or alpha <= 0:
            raise SteerhealError(f"alpha={alpha!r}: LoRA alpha is a positive number (peft scales by alpha / r)")
        band = check_band(depth_band)
        _check_unadapted(model)
        names, fan_in_fan_out = select_targets(model, target_modules, band)
        patterns = [target_modules] if isinstance(target_modules, str) else target_modules
        handle = cls(model, r, alpha, None if patterns is None else list(patterns), band, names, fan_in_fan_out, seed)
        handle.current = Round("round_0", r, float(alpha), 1.0, 0, 0)
        handle._add_adapter(handle.current)
        logger.info(f"GatedLoRA attached: r={r}, alpha={alpha:g}, {len(names)} modules in blocks of band {band}")
        return handle

    def _add_adapter(self, rnd: Round, weights: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
        """Create the peft adapter for `rnd` (already entered in history/current), fp32, then activate."""
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
                self.peft_model = get_peft_model(self.model, config, adapter_name=rnd.name)
            else:
                self.peft_model.add_adapter(rnd.name, config)
        self._layers = {name: self.model.get_submodule(name) for name in self.target_names}
        for name, layer in self._layers.items():
            layer.lora_A[rnd.name].to(torch.float32)
            layer.lora_B[rnd.name].to(torch.float32)
            if weights is not None:
                a, b = weights[name]
                with torch.no_grad():
                    layer.lora_A[rnd.name].weight.copy_(a)
                    layer.lora_B[rnd.name].weight.copy_(b)
        self._activate()

    def _activate(self) -> None:
        """Every round active (in order), then the history frozen again: peft's activation marks all
        the rounds it activates trainable (peft 0.21's `set_adapter`, tested), and only the current round may train."""
        self.peft_model.base_model.set_adapter([r.name for r in self.rounds])
        keep = {id(p) for p in self.trainable_parameters()}
        for param in self.peft_model.parameters():
            param.requires_grad_(id(param) in keep)
        self._apply_gates()

    def _apply_gates(self) -> None:
        for layer in self._layers.values():
            for rnd in self.rounds:
                layer.scaling[rnd.name] = rnd.gate * rnd.scale

    # ------------------------------------------------------------------ rounds and gates
    @property
    def rounds(self) -> list[Round]:
        """History rounds (oldest first), then the current round."""
        return [*self.history, *([self.current] if self.current is not None else [])]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The current round's A and B factors, module by module: what the optimizer gets."""
        if self.current is None:
            return []
        name = self.current.name
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
        self.current = Round(_round_name(index, index), self.r, self.alpha, 1.0, index, index)
        self._add_adapter(self.current)
        logger.info(f"folded {self.history[-1].name} into the history; {self.current.name} trains now")
        return self.current

    def _factors(self, round_name: str, module: str) -> tuple[Tensor, Tensor]:
        layer = self._layers[module]
        return layer.lora_A[round_name].weight.detach(), layer.lora_B[round_name].weight.detach()

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
            rank = _check_rank(self.r if rank is None else rank, "rank")
        if not self.history:
            raise SteerhealError("collapse_history: there is no history to collapse; fold() a trained round first")
        old = self.history
        weights = [r.gate * r.scale for r in old]
        new: dict[str, tuple[Tensor, Tensor]] = {}
        cut2 = total2 = worst = 0.0
        worst_module = None
        for module in self.target_names:
            a, b = weighted_concat([self._factors(r.name, module) for r in old], weights)
            if method == "svd":
                a, b, cut, total = truncated_svd(a, b, int(rank))  # type: ignore[arg-type]
                cut2, total2 = cut2 + cut, total2 + total
                if total > 0 and math.sqrt(cut / total) > worst:
                    worst, worst_module = math.sqrt(cut / total), module
            new[module] = (a, b)
        new_rank = int(next(iter(new.values()))[0].shape[0])
        collapsed = Round(
            _round_name(old[0].first, old[-1].last), new_rank, float(new_rank), 1.0, old[0].first, old[-1].last
        )
        self.history = []
        self._activate()  # only the current round active, so deleting the old ones changes nothing else
        for rnd in old:
            self.peft_model.delete_adapter(rnd.name)
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
        return any(bool(layer.lora_B[rnd.name].weight.detach().any()) for layer in self._layers.values())

    def _contributing(self, history: float | Sequence[float], current: float, what: str) -> list[tuple[Round, float]]:
        """(round, gate) for every round that adds something at these gates: gate not 0, and for the
        current round, trained (a fresh round's B is zero). Leaving the others out is exact."""
        hist, cur = self._parse_gates(history, current, what)
        parts = [(r, g) for r, g in zip(self.history, hist, strict=True) if g != 0]
        if self.current is not None and cur != 0 and self._trained(self.current):
            parts.append((self.current, cur))
        return parts

    def export_peft(self, directory: str | Path, history: float | Sequence[float] = 1.0, current: float = 1.0) -> Path:
        """One standard peft LoRA adapter (`PeftModel.from_pretrained(base, directory)`) equal to the student at
        these gates: every round's factors concatenated, each B scaled by gate · alpha / r, lora_alpha = r."""
        from peft import LoraConfig

        parts = self._contributing(history, current, "export_peft")
        if not parts:
            current_name = self.current.name if self.current else "none"
            raise SteerhealError(
                f"export_peft: no rounds to export: the history holds {len(self.history)} rounds (at the given gates "
                f"none is on) and the current round {current_name} is untrained or gated to 0. Train a round first."
            )
        tensors: dict[str, Tensor] = {}
        for module in self.target_names:
            a, b = weighted_concat([self._factors(r.name, module) for r, _ in parts], [g * r.scale for r, g in parts])
            key_a, key_b = lora_keys(module)
            tensors[key_a], tensors[key_b] = a, b
        rank = sum(r.rank for r, _ in parts)
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=list(self.target_names),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            fan_in_fan_out=self.fan_in_fan_out,
            base_model_name_or_path=self.fingerprint.name_or_path or None,
        )
        directory = Path(directory)
        write_adapter(directory, config, tensors)
        atomic_write_json(
            directory / EXPORT_META_FILE,
            {
                "kind": "steerheal.peft_export",
                "format_version": FORMAT_VERSION,
                "rounds": [{"name": r.name, "gate": g, "rank": r.rank} for r, g in parts],
                "fingerprint": self.fingerprint.to_dict(),
                **provenance(),
            },
        )
        logger.info(f"exported {[r.name for r, _ in parts]} as one peft adapter of rank {rank} to {directory}")
        return directory

    def deltas(self, history: float | Sequence[float] = 1.0, current: float = 1.0) -> dict[str, Tensor]:
        """Σ gate · alpha/r · B A per targeted module in float32, in the layout of the module's weight
        (empty when no round contributes at these gates)."""
        return self._deltas(self._contributing(history, current, "deltas"))

    def _deltas(self, parts: list[tuple[Round, float]]) -> dict[str, Tensor]:
        out = {}
        for module in self.target_names if parts else []:
            delta = sum(dense_delta(*self._factors(r.name, module)) * (g * r.scale) for r, g in parts)
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
        if quantization(self.model) == "8bit":
            raise SteerhealError(
                "bake: the base is 8-bit; steerheal de-quantises only 4-bit bases. Load the base unquantised (or in "
                "4-bit), GatedLoRA.load the saved rounds onto it, and bake that."
            )
        parts = self._contributing(history, current, "bake")
        deltas = self._deltas(parts)
        if not deltas:
            logger.warning("bake: no round contributes at these gates; the baked model is the base, densified")
        dense, report = merge_dense(self.model, deltas, dtype, device)
        report["rounds"] = [{"name": r.name, "gate": g} for r, g in parts]
        self.last_bake_report = report
        if dtype != torch.float32:
            logger.warning(
                f"bake to {report['dtype']}: rounding moved the merged weights by "
                f"{report['relative_error_of_delta']:.3g} "
                f"of the adapters' own delta (Frobenius; worst {report['worst_module']}: "
                f"{report['worst_relative_error']:.3g}). Bake in float32 to keep the deltas exactly."
            )
        else:
            logger.info(f"baked {len(deltas)} modules into a dense float32 {type(dense).__name__}")
        return dense

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Each round in peft's format (`<dir>/<round>/`), then `gated.json` last: a save is complete only
        when `gated.json` exists. Round folders of an earlier save that are no longer rounds are removed."""
        from peft.utils import get_peft_model_state_dict

        directory = Path(directory)
        meta_path = directory / META_FILE
        stale: set[str] = set()
        if meta_path.is_file():
            old = read_json(meta_path, f"earlier GatedLoRA save at {directory}")
            stale = {r.get("name") for r in [*old.get("history", []), old.get("current") or {}] if isinstance(r, dict)}
            meta_path.unlink()
        for rnd in self.rounds:
            # save_embedding_layers=False: no embedding is ever targeted, and "auto" asks the hub (with retries)
            state = get_peft_model_state_dict(self.peft_model, adapter_name=rnd.name, save_embedding_layers=False)
            expected = {key for module in self.target_names for key in lora_keys(module)}
            if set(state) != expected:  # load reads these keys back: refuse to write what it could not read
                raise SteerhealError(
                    f"save: peft named {rnd.name}'s tensors {sorted(set(state) ^ expected)[:4]} unlike the "
                    "'base_model.model.<module>.lora_A.weight' layout steerheal reads; this peft version is unsupported"
                )
            write_adapter(directory / rnd.name, self.peft_model.peft_config[rnd.name], state)
        for name in sorted(stale - {r.name for r in self.rounds} - {None}):
            for file in ("adapter_config.json", "adapter_model.safetensors"):
                (directory / name / file).unlink(missing_ok=True)
            if (directory / name).is_dir() and not any((directory / name).iterdir()):
                (directory / name).rmdir()
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "r": self.r,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "target_names": self.target_names,
            "depth_band": list(self.depth_band),
            "fan_in_fan_out": self.fan_in_fan_out,
            "seed": self.seed,
            "history": [asdict(r) for r in self.history],
            "current": asdict(self.current) if self.current else None,
            "fingerprint": self.fingerprint.to_dict(),
            **provenance(),
        }
        atomic_write_json(meta_path, meta)
        return directory

    @classmethod
    def load(cls, model: nn.Module, directory: str | Path) -> GatedLoRA:
        """Attach the rounds saved in `directory` to `model` (in place), gates and all.

        The base must be the model they were trained on: an identity difference (name, architecture,
        sizes) is an error; a precision difference (a 4-bit base against a bf16 one) is a logged warning.
        """
        directory = Path(directory)
        what = f"GatedLoRA at {directory}"
        meta = read_json(directory / META_FILE, what)
        if meta.get("format_version") != FORMAT_VERSION or meta.get("kind") != KIND:
            raise SteerhealError(
                f"{what}: kind {meta.get('kind')!r} version {meta.get('format_version')!r} is not a GatedLoRA save "
                f"this steerheal reads ({KIND} version {FORMAT_VERSION})"
            )
        saved_fp = Fingerprint.from_dict(meta.get("fingerprint") or {}, what)
        mine = fingerprint(model)
        identity = saved_fp.differences(mine, "identity")
        if identity:
            raise SteerhealError(
                f"{what} was trained on another model than this one ({'; '.join(identity)}); load it onto its own "
                "base model"
            )
        # another GGUF rounding of the same model is a difference of precision, not of identity
        precision = saved_fp.differences(mine, "precision") + saved_fp.differences(mine, "provenance")
        if precision:
            logger.warning(f"{what} was trained on the same model in another precision: {'; '.join(precision)}")
        _check_unadapted(model)
        inner = unwrap(model)
        names = [str(n) for n in meta.get("target_names") or []]
        kinds = {linear_kind(inner.get_submodule(n)) if _has_module(inner, n) else None for n in names}
        if not names or None in kinds:
            raise SteerhealError(f"{what}: its target modules are not linear layers of this model; the file is damaged")
        history = [Round.from_dict(r, what) for r in meta.get("history") or []]
        current = Round.from_dict(meta.get("current"), what)
        r = _check_rank(int(meta["r"]), f"{what}: r")
        handle = cls(
            model,
            r,
            float(meta["alpha"]),
            meta.get("target_modules"),
            check_band(meta["depth_band"]),
            names,
            bool(meta["fan_in_fan_out"]),
            int(meta["seed"]),
        )
        rounds = [*history, current]
        weights = [handle._read_round(directory / rnd.name, rnd, f"{what}, round {rnd.name}") for rnd in rounds]
        for rnd, factors in zip(rounds, weights, strict=True):  # every file read and checked before model work
            if rnd is current:
                handle.current = rnd
            else:
                handle.history.append(rnd)
            handle._add_adapter(rnd, factors)
        logger.info(f"loaded {handle!r} from {directory}")
        return handle

    def _read_round(self, folder: Path, rnd: Round, what: str) -> dict[str, tuple[Tensor, Tensor]]:
        config = read_config(folder, what)
        if config.get("r") != rnd.rank or float(config.get("lora_alpha", "nan")) != rnd.alpha:
            raise SteerhealError(
                f"{what}: adapter_config.json says r={config.get('r')}, alpha={config.get('lora_alpha')} "
                f"but gated.json says r={rnd.rank}, alpha={rnd.alpha}; the files do not belong together"
            )
        tensors = read_weights(folder, what)
        foreign = sorted(set(tensors) - {key for module in self.target_names for key in lora_keys(module)})
        if foreign:
            raise SteerhealError(f"{what}: unexpected tensors {foreign[:4]}; the adapter file is damaged or foreign")
        out = {}
        for module in self.target_names:
            key_a, key_b = lora_keys(module)
            if key_a not in tensors or key_b not in tensors:
                raise SteerhealError(f"{what}: no factors for {module}; the adapter file is damaged or foreign")
            a, b = tensors[key_a], tensors[key_b]
            layer = self.model.get_submodule(module)
            in_f, out_f = _in_out(layer)
            if (
                a.shape != (rnd.rank, in_f)
                or b.shape != (out_f, rnd.rank)
                or not (a.isfinite().all() and b.isfinite().all())
            ):
                raise SteerhealError(
                    f"{what}: factors of {module} have shapes {tuple(a.shape)}, {tuple(b.shape)} (expected "
                    f"{(rnd.rank, in_f)}, {(out_f, rnd.rank)}) or are not finite; the file is damaged"
                )
            out[module] = (a, b)
        return out


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _in_out(layer: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or a transposed Conv1D (whose weight is [in, out])."""
    if linear_kind(layer) == "conv1d":
        return int(layer.weight.shape[0]), int(layer.weight.shape[1])
    return int(layer.in_features), int(layer.out_features)
