"""A bank of conditioned adapters: several concepts' groups of gated rounds on one base, one dial each.

A bank is not several GatedLoRAs on one model (peft would wrap the model twice, and `GatedLoRA.attach` refuses a
model that already carries adapters) but one peft model holding every concept's rounds, named
`<concept>__round_<k>`, all active at once. Each concept is a group: a `GatedLoRA` of its own (history, current
round, gates, dial, save, export) whose rounds are only its own, so a concept's dial writes only its own rounds'
scalings. Every dial at 0 is every gate at 0: each adapted layer returns `base(x) + 0 + … + 0`, the base bit for
bit; a concept at dial 0 adds exact zeros, so the others' output is what they give alone (docs/adapter.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from steerheal.adapter import save_and_load
from steerheal.adapter.bake import merge_dense
from steerheal.adapter.dial import undialled_gates
from steerheal.adapter.gated import GatedLoRA
from steerheal.adapter.round import check_gate, group_prefix
from steerheal.adapter.targets import attach_plan
from steerheal.boundary import check_methods, checked
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, provenance, read_json
from steerheal.log import logger

BANK_FILE = "bank.json"
KIND = "steerheal.adapter_bank"
FORMAT_VERSION = 1
CONCEPT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_))*")


def check_concepts(concepts: Sequence[str], what: str = "concepts") -> list[str]:
    """Concept names of a bank: at least one, distinct, each letters, digits, '-' or single '_' (peft names
    the rounds `<concept>__round_<k>`, and a module name cannot hold a '.')."""
    names = list(concepts)
    if not names:
        raise SteerhealError(f"{what} is empty; a bank holds at least one concept (e.g. ['joy', 'calm'])")
    for name in names:
        if not isinstance(name, str) or not CONCEPT_NAME.fullmatch(name) or name.endswith("_"):
            raise SteerhealError(
                f"{what}: {name!r} is not a concept name a bank can use; use letters, digits, '-' and single '_' "
                "(as in 'joy' or 'rainy_day')"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SteerhealError(f"{what}: {repeated} appear more than once; name each concept once")
    return names


class Bank:
    """Several concepts on one base, each its own group of gated rounds with its own dial. Build it with
    `attach` (fresh groups to train) or `load` (groups saved by `GatedLoRA.save` or `Bank.save`)."""

    def __init__(self) -> None:
        self.views: dict[str, GatedLoRA] = {}

    def __repr__(self) -> str:
        return f"Bank({', '.join(f'{c}: {len(v.history)} rounds' for c, v in self.views.items())})"

    @property
    def concepts(self) -> list[str]:
        return list(self.views)

    def __getitem__(self, concept: str) -> GatedLoRA:
        """The concept's group: a GatedLoRA over its own rounds only (fold, gates, dial, save, export_peft)."""
        if concept not in self.views:
            raise SteerhealError(f"the bank holds no concept {concept!r}; its concepts are {self.concepts}")
        return self.views[concept]

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        concepts: Sequence[str],
        r: int = 8,
        alpha: float = 16,
        target_modules: str | Sequence[str] | None = None,
        depth_band: Sequence[float] = (0.2, 0.8),
        seed: int = 0,
    ) -> Bank:
        """A fresh zero-initialised `round_0` per concept on `model` (in place; the output is unchanged), all on
        the same targets. The first concept's current round is the trainable one; `train(concept)` switches."""
        names = check_concepts(concepts)
        patterns, band, targets, fan_in_fan_out = attach_plan(model, r, alpha, target_modules, depth_band)
        bank = cls()
        first = GatedLoRA(model, r, alpha, patterns, band, targets, fan_in_fan_out, seed)
        for name in names:
            view = first if name == names[0] else GatedLoRA(
                model, r, alpha, first.target_modules, band, targets, fan_in_fan_out, seed
            )  # fmt: skip
            view.fingerprint, view.peft_model = first.fingerprint, first.peft_model
            view.prefix, view.bank = group_prefix(name), bank
            bank.views[name] = view
            view._start()
        bank.train(names[0])
        return bank

    def train(self, concept: str) -> GatedLoRA:
        """Make `concept`'s current round the only trainable parameters (every other group frozen); returns its
        group, whose `trainable_parameters()` the optimizer takes."""
        view = self[concept]
        view._activate()
        return view

    # ------------------------------------------------------------------ dials
    def dials(self, values: Mapping[str, float]) -> _Dials:
        """Each named concept's dial (its trained gates times g; 0 = that concept off); unnamed concepts keep
        theirs. A setter and a context manager (`with bank.dials({"joy": 1, "calm": 0.5}): ...` restores on exit).
        A concept's dial writes only its own rounds' scalings."""
        unknown = sorted(set(values) - set(self.views))
        if unknown:
            raise SteerhealError(f"dials: {unknown} are not concepts of this bank; its concepts are {self.concepts}")
        checked_values = {c: check_gate(g, f"dials[{c!r}]") for c, g in values.items()}
        return _Dials(self, checked_values)

    @property
    def dial_values(self) -> dict[str, float]:
        return {c: v.dial_value for c, v in self.views.items()}

    # ------------------------------------------------------------------ files and exports
    def save(self, directory: str | Path) -> Path:
        """Each concept's group as `GatedLoRA.save` writes it into `<dir>/<concept>/`, then `bank.json` last."""
        directory = Path(directory)
        for concept, view in self.views.items():
            view.save(directory / concept)
        first = next(iter(self.views.values()))
        meta = {"format_version": FORMAT_VERSION, "kind": KIND, "concepts": self.concepts}
        atomic_write_json(directory / BANK_FILE, {**meta, "fingerprint": first.fingerprint.to_dict(), **provenance()})
        return directory

    @classmethod
    @checked
    def load(cls, model: nn.Module, source: str | Path | Mapping[str, str | Path]) -> Bank:
        """A bank on `model` (in place) from a `Bank.save` folder, or from one GatedLoRA save folder per concept
        (`{"joy": "runs/b/concepts/joy/round_02/adapter", ...}`): every group's files are checked as
        `GatedLoRA.load` checks them, and the groups must share their targets and rank."""
        if isinstance(source, Mapping):
            folders = {c: Path(p) for c, p in source.items()}
        else:
            meta = read_json(Path(source) / BANK_FILE, f"bank at {source}")
            if meta.get("kind") != KIND or meta.get("format_version") != FORMAT_VERSION:
                raise SteerhealError(f"bank at {source}: {BANK_FILE} is not a bank this steerheal reads ({KIND} v1)")
            folders = {c: Path(source) / c for c in meta.get("concepts") or []}
        check_concepts(list(folders), "Bank.load concepts")
        bank = cls()
        for concept, folder in folders.items():
            save_and_load.load_rounds(GatedLoRA, model, folder, bank=bank, concept=concept)
        bank.train(bank.concepts[0])
        logger.info(f"loaded {bank!r}")
        return bank

    def export_peft(self, directory: str | Path, overwrite: bool = False) -> dict[str, Path]:
        """One plain peft adapter per concept, `<dir>/<concept>/` (its trained rounds at gate 1). peft loads them
        side by side as named adapters (`PeftModel.from_pretrained(base, dir/joy, adapter_name="joy")`,
        `load_adapter(dir/calm, adapter_name="calm")`); their ranks differ, so `add_weighted_adapter` combines
        them with `combination_type="cat"` (exact) or `"svd"`."""
        directory = Path(directory)
        return {c: v.export_peft(directory / c, overwrite=overwrite) for c, v in self.views.items()}

    def deltas(self, dials: Mapping[str, float]) -> dict[str, Tensor]:
        """Σ over concepts of dial · their undialled rounds' delta, per targeted module, float32 (concepts not
        named count at 0)."""
        unknown = sorted(set(dials) - set(self.views))
        if unknown:
            raise SteerhealError(f"deltas: {unknown} are not concepts of this bank; its concepts are {self.concepts}")
        total: dict[str, Tensor] = {}
        for concept, g in dials.items():
            view = self.views[concept]
            gates = undialled_gates(view)
            g = check_gate(g, f"dials[{concept!r}]")
            current = g * gates[view.current.name] if view.current is not None else 0.0
            history = [g * gates[r.name] for r in view.history]
            for module, delta in view.deltas(history, current).items():
                total[module] = total[module] + delta if module in total else delta
        return total

    def bake(
        self, dials: Mapping[str, float], dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> PreTrainedModel:
        """A dense model (no adapters) equal to the bank at these dials (concepts not named at 0), merged in
        float32 as `GatedLoRA.bake` merges one concept."""
        first = next(iter(self.views.values()))
        dense, report = merge_dense(first.model, self.deltas(dials), dtype, device)
        first.last_bake_report = {**report, "dials": dict(dials)}
        return dense


class _Dials:
    """`Bank.dials(...)`: applied when made; as a context manager, every concept's gates come back on exit."""

    def __init__(self, bank: Bank, values: dict[str, float]) -> None:
        self.bank, self.values = bank, values
        self._dials = [bank.views[c].dial(g) for c, g in values.items()]

    def __repr__(self) -> str:
        return f"Dials({self.values})"

    def __enter__(self) -> Bank:
        return self.bank

    def __exit__(self, *exc: object) -> None:
        for dial in reversed(self._dials):
            dial.__exit__(*exc)


@contextmanager
def only(bank: Bank, values: Mapping[str, float]) -> Iterator[Bank]:
    """The bank with the named concepts at their dials and every other concept at 0, restored on exit."""
    with ExitStack() as stack:
        stack.enter_context(bank.dials({c: float(values.get(c, 0.0)) for c in bank.concepts}))
        yield bank


check_methods(Bank)
