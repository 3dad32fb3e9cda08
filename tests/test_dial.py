"""GatedLoRA.dial: 0 = the base bit for bit, 1 = the student, g = g times every round's delta; setter and context.

Two rounds with seeded random factors (as in test_adapter.py), the current one at a trained gate of 0.5, so a
dial that ignored a round's own gate, or scaled only one round, would show.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import logits as _logits
from conftest import randomise, tiny
from steerheal.adapter.gated import GatedLoRA
from steerheal.errors import SteerhealError


def _randomise(adapter, seed: int, scale: float = 0.04) -> None:
    randomise(adapter, seed, scale)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dial_is_base_at_0_student_at_1_and_restores(arch):
    model = copy.deepcopy(tiny(arch)[0])
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    base = _logits(model, ids)
    adapter = GatedLoRA.attach(model, r=4)
    _randomise(adapter, 1)
    adapter.fold()
    _randomise(adapter, 2)
    adapter.set_gates(history=1.0, current=0.5)
    student = _logits(model, ids)
    assert (student - base).abs().max() > 0.1, "the random rounds must move the logits, or nothing is tested"

    with adapter.dial(0.0) as same:
        assert same is adapter and adapter.dial_value == 0.0
        assert torch.equal(_logits(model, ids), base), "dial 0 is the base, bit for bit"
    assert [r.gate for r in adapter.rounds] == [1.0, 0.5] and adapter.dial_value == 1.0
    assert torch.equal(_logits(model, ids), student), "the context restores the trained gates"

    # multiplicative on every round's own gate; dial(a) then dial(b) is dial(b), never a·b
    adapter.dial(2.0)
    assert [r.gate for r in adapter.rounds] == [2.0, 1.0]
    with adapter.gates(history=2.0, current=1.0):
        doubled = _logits(model, ids)
    assert torch.equal(_logits(model, ids), doubled)
    adapter.dial(0.5)
    assert [r.gate for r in adapter.rounds] == [0.5, 0.25] and adapter.dial_value == 0.5
    adapter.dial(0.0)
    assert torch.equal(_logits(model, ids), base)
    adapter.dial(1.0)  # undoes dial(0): the undialled gates were kept, and x · 1.0 == x
    assert [r.gate for r in adapter.rounds] == [1.0, 0.5]
    assert torch.equal(_logits(model, ids), student)

    # nested contexts: the inner g applies; each exit restores what its call found, also on an exception
    with adapter.dial(2.0):
        with pytest.raises(RuntimeError, match="inside"), adapter.dial(0.5):
            assert [r.gate for r in adapter.rounds] == [0.5, 0.25]
            raise RuntimeError("inside")
        assert [r.gate for r in adapter.rounds] == [2.0, 1.0] and adapter.dial_value == 2.0
    assert [r.gate for r in adapter.rounds] == [1.0, 0.5]

    # gates set otherwise while dialled become the new undialled gates
    adapter.dial(2.0)
    adapter.set_gates(history=1.0, current=1.0)
    assert adapter.dial_value == 1.0
    adapter.dial(0.5)
    assert [r.gate for r in adapter.rounds] == [0.5, 0.5]
    adapter.dial(1.0)

    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(SteerhealError, match="dial"):
            adapter.dial(bad)


def test_dial_scales_each_module_delta_by_g():
    model = copy.deepcopy(tiny("llama")[0])
    adapter = GatedLoRA.attach(model, r=4)
    _randomise(adapter, 3, scale=0.2)
    adapter.fold()
    _randomise(adapter, 4, scale=0.2)
    adapter.set_gates(history=1.0, current=0.5)
    name = adapter.target_names[0]
    layer = model.get_submodule(name)
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        with adapter.dial(0.0):
            out0 = layer(x)
        with adapter.dial(1.0):
            delta = layer(x) - out0
        assert delta.abs().max() > 1e-2, "the module's delta must be visible, or nothing is tested"
        for g in (0.25, 0.5, 1.5, 2.0, -1.0):
            with adapter.dial(g):
                got = layer(x) - out0
            # float32: out = base + g·δ is rounded once (ulp of |out| ≲ 2 here: ~2.4e-7), and the subtraction
            # of base and the product g·δ round again; 1e-5 is a few ulps of the outputs, far below |δ|
            torch.testing.assert_close(got, g * delta, rtol=0, atol=1e-5)
