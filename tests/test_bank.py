"""Bank: several concepts' gated rounds on one base, one dial each (issue 21).

Exactness (every dial 0 = the base bit for bit; concept j's dial leaves concept i's tensors, scalings and, at
j = 0, its output untouched), save/load, the per-concept plain peft export loaded side by side by peft and
combined with add_weighted_adapter('cat'), and the merged model at chosen dials. Rounds get seeded random factors
(a trained round's stand-in), two for one concept and one for the other, so the groups' ranks differ.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import logits as _logits
from conftest import randomise, tiny
from steerheal.adapter.bank import Bank, check_concepts
from steerheal.adapter.gated import GatedLoRA
from steerheal.errors import SteerhealError


def _randomise(adapter, seed: int, scale: float = 0.05) -> None:
    randomise(adapter, seed, scale)


def _factors(view: GatedLoRA) -> list[torch.Tensor]:
    return [t.clone() for r in view.rounds for m in view.target_names for t in view._factors(r, m)]


def _scalings(view: GatedLoRA) -> list[float]:
    return [layer.scaling[view.key(r)] for layer in view._layers.values() for r in view.rounds]


def _trained_bank(model) -> Bank:
    bank = Bank.attach(model, ["joy", "calm"], r=2, alpha=4)
    joy = bank.train("joy")
    assert {id(p) for p in joy.trainable_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}
    _randomise(joy, 1)
    joy.fold()
    _randomise(bank.train("joy"), 2)
    joy.fold()
    calm = bank.train("calm")
    assert {id(p) for p in calm.trainable_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}
    _randomise(calm, 3)
    calm.fold()
    return bank


def test_bank_exactness_save_load_export_and_bake(tmp_path):
    model = copy.deepcopy(tiny("llama")[0])
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    base = _logits(model, ids)
    bank = _trained_bank(model)
    assert [r.name for r in bank["joy"].history] == ["round_0", "round_1"] and len(bank["calm"].history) == 1
    both = _logits(model, ids)
    assert (both - base).abs().max() > 0.1, "the random rounds must move the logits, or nothing is tested"

    with bank.dials({"joy": 0.0, "calm": 0.0}):
        assert torch.equal(_logits(model, ids), base), "every dial at 0 is the base, bit for bit"
    assert torch.equal(_logits(model, ids), both), "the context restores every concept's gates"

    # concept j's dial never touches concept i's rounds: tensors and scalings, and its output at j = 0
    joy_tensors, joy_scalings = _factors(bank["joy"]), _scalings(bank["joy"])
    with bank.dials({"joy": 1.0, "calm": 0.0}):
        joy_alone = _logits(model, ids)
    for g in (0.5, 2.0, 0.0):
        bank.dials({"calm": g})
        assert _scalings(bank["joy"]) == joy_scalings and bank.dial_values == {"joy": 1.0, "calm": g}
        assert all(torch.equal(a, b) for a, b in zip(_factors(bank["joy"]), joy_tensors, strict=True))
    bank.dials({"calm": 1.0})
    with pytest.raises(SteerhealError, match="not concepts of this bank"):
        bank.dials({"sadness": 1.0})

    bank.save(tmp_path / "bank")
    joy_only = copy.deepcopy(tiny("llama")[0])
    GatedLoRA.load(joy_only, tmp_path / "bank" / "joy")  # a bank group is an ordinary GatedLoRA save
    assert torch.equal(_logits(joy_only, ids), joy_alone), "joy with calm at dial 0 = joy alone, bit for bit"

    again = copy.deepcopy(tiny("llama")[0])
    loaded = Bank.load(again, tmp_path / "bank")
    assert loaded.concepts == ["joy", "calm"] and torch.equal(_logits(again, ids), both)
    with loaded.dials({"joy": 0.0, "calm": 0.0}):
        assert torch.equal(_logits(again, ids), base)
    with pytest.raises(SteerhealError, match="already carries peft adapters"):
        GatedLoRA.attach(again)

    # export: one plain peft adapter per concept, loaded side by side by peft alone
    from peft import PeftModel

    paths = bank.export_peft(tmp_path / "export")
    plain = PeftModel.from_pretrained(copy.deepcopy(tiny("llama")[0]), str(paths["joy"]), adapter_name="joy")
    plain.load_adapter(str(paths["calm"]), adapter_name="calm")
    assert plain.peft_config["joy"].r != plain.peft_config["calm"].r, "ranks differ: 'cat' or 'svd' combine them"
    plain.base_model.set_adapter(["joy", "calm"])
    # 1e-5: the export folds gates into B and concatenates rounds, a float32 reassociation (docs/adapter.md)
    assert (_logits(plain, ids) - both).abs().max() < 1e-5
    plain.add_weighted_adapter(["joy", "calm"], [1.0, 0.5], "mix", combination_type="cat")
    plain.base_model.set_adapter("mix")
    with bank.dials({"joy": 1.0, "calm": 0.5}):
        mixed = _logits(model, ids)
        dense = bank.bake({"joy": 1.0, "calm": 0.5})
    assert (mixed - both).abs().max() > 0.01
    assert (_logits(plain, ids) - mixed).abs().max() < 1e-5
    # the merged model for a chosen set of dials; 1e-4 as for GatedLoRA.bake (a dense float32 re-summation)
    assert (_logits(dense, ids) - mixed).abs().max() < 1e-4
    assert torch.equal(_logits(model, ids), both), "baking changes no gate"


def test_bank_refuses_bad_concepts_and_mismatched_groups(tmp_path):
    for bad, match in (([], "empty"), (["joy", "joy"], "more than once"), (["a.b"], "not a concept name")):
        with pytest.raises(SteerhealError, match=match):
            check_concepts(bad)
    with pytest.raises(SteerhealError, match="not a concept name"):
        check_concepts(["calm__x"])
    model = copy.deepcopy(tiny("llama")[0])
    with pytest.raises(SteerhealError, match="bank holds no concept"):
        Bank.attach(model, ["joy"], r=2)["calm"]
    one = GatedLoRA.attach(copy.deepcopy(tiny("llama")[0]), r=2)
    one.save(tmp_path / "r2")
    other = GatedLoRA.attach(copy.deepcopy(tiny("llama")[0]), r=4)
    other.save(tmp_path / "r4")
    with pytest.raises(SteerhealError, match="differ from the bank's other concepts"):
        Bank.load(copy.deepcopy(tiny("llama")[0]), {"joy": tmp_path / "r2", "calm": tmp_path / "r4"})
