"""One heal round on toyworld: it learns, the barrier holds, references and rounds behave, bad input fails."""

from __future__ import annotations

import pytest
import torch

import steerheal as sh
from steerheal.toyworld import world
from steerheal.toyworld.load import chat_prompts
from steerheal.toyworld.metrics import mood_rates
from steerheal.training.bounded import (
    completion_positions,
    final_hidden,
    gather,
    head_parts,
    per_sequence,
    token_scores,
)
from steerheal.training.heal import HealConfig, _batch, heal
from steerheal.training.losses import aggregate_kl


@pytest.fixture(scope="module")
def pairs():
    model, tok = sh.toyworld.load()
    pos, neg = world.contrast_set("joy", 64)
    v = sh.Vector.train(model, tok, pos, neg, position="mean")
    v.calibrate(model, tok, chat_prompts(tok, world.neutral_prompts(16, 0, "calibration")), 1.0, liveness_samples=0)
    made = sh.make_pairs(model, tok, v, chat_prompts(tok, world.neutral_prompts(128, 0, "train")), alpha=1.0)
    return [p for p in made if p.kept]


def _fresh():
    model, tok = sh.toyworld.load()
    return model, tok, sh.GatedLoRA.attach(model, r=8, alpha=16)


@torch.no_grad()
def _measure(model, adapter, pairs, kl_ref="base", agg="rmse"):
    """(mean SFT NLL over the chosen completions, mean D against the reference) for a set of pairs."""
    batch, mask = _batch([tuple(p.prompt_ids) for p in pairs], [tuple(p.chosen_ids) for p in pairs])
    positions = completion_positions(batch.input_ids, mask)
    with adapter.reference(kl_ref):
        ref = gather(final_hidden(model, batch), positions)
    lp, kl = token_scores(head_parts(model), gather(final_hidden(model, batch), positions), positions.targets, ref)
    return float(-lp.mean()), float(aggregate_kl(*per_sequence(kl, positions), agg).mean())


def test_a_round_lowers_the_sft_loss_and_carries_the_trait_without_steering(pairs):
    model, tok, adapter = _fresh()
    base_joy = mood_rates(sh.toyworld.sample(model, tok, 64, seed=7))["joy"]
    before, _ = _measure(model, adapter, pairs)
    result = heal(model, adapter, pairs[:96], HealConfig(lr=2e-3, epochs=3, lam=0.3, tau=1.0))
    after, _ = _measure(model, adapter, pairs)
    assert after < before - 0.05
    assert result.epoch_mean("sft", 2) < result.epoch_mean("sft", 0)
    student_joy = mood_rates(sh.toyworld.sample(model, tok, 64, seed=7))["joy"]
    assert student_joy > base_joy + 0.1, "the unsteered student carries the trait"
    with adapter.reference("base"):
        assert mood_rates(sh.toyworld.sample(model, tok, 64, seed=7))["joy"] == base_joy  # gate 0 is the base
    first = result.events[0]
    assert {"loss", "sft", "pref", "penalty", "D_mean", "active_fraction", "lr", "grad_ratio_barrier_to_sft"} <= set(
        first
    )
    assert sum("grad_ratio_barrier_to_sft" in e for e in result.events) == len(range(0, result.steps, 10))


def test_a_large_lam_holds_D_near_tau(pairs):
    tau = 0.05
    free_model, _, free_adapter = _fresh()
    few = pairs[:48]
    heal(free_model, free_adapter, few, HealConfig(lr=2e-3, epochs=3, lam=0.0, tau=tau, pref="none"))
    _, free_d = _measure(free_model, free_adapter, few)
    model, _, adapter = _fresh()
    result = heal(model, adapter, few, HealConfig(lr=2e-3, epochs=3, lam=50.0, tau=tau, pref="none"))
    _, held_d = _measure(model, adapter, few)
    assert free_d > 3 * tau, "without the barrier the student drifts well past tau"
    assert held_d <= tau + 0.05, f"D {held_d:.3f} should stay within tau {tau} + 0.05"
    assert max(e["active_fraction"] for e in result.events) > 0, "the barrier was active at some step"


@pytest.mark.parametrize("pref", ["none", "orpo", "dpo"])
@pytest.mark.parametrize("kl_ref", ["base", "prev"])
def test_every_preference_term_and_reference_runs_and_history_stays_frozen(pairs, pref, kl_ref):
    model, _, adapter = _fresh()
    heal(model, adapter, pairs[:8], HealConfig(lr=1e-3, epochs=1, grad_ratio_every=0))
    adapter.fold()
    history = [p.detach().clone() for n, p in adapter.peft_model.named_parameters() if "round_0" in n]
    current = [p.detach().clone() for p in adapter.trainable_parameters()]
    result = heal(model, adapter, pairs[:8], HealConfig(pref=pref, kl_ref=kl_ref, lr=1e-3, epochs=1))
    after = [p for n, p in adapter.peft_model.named_parameters() if "round_0" in n]
    assert all(torch.equal(a, b) for a, b in zip(history, after, strict=True)), "history rounds are unchanged"
    assert not all(torch.equal(a, b) for a, b in zip(current, adapter.trainable_parameters(), strict=True))
    assert result.round == "round_1" and result.steps == 1
    if pref == "none":
        assert all(e["pref"] == 0.0 for e in result.events)
    else:
        assert all(e["pref"] > 0 for e in result.events)


def test_accumulation_weighs_sft_by_tokens(pairs):
    """With micro-batches of one, the step's SFT is the mean over all its completion tokens (not a mean of
    per-sequence means): equal to one batch holding the same pairs."""
    two = sorted(pairs, key=lambda p: len(p.chosen_ids))[:: len(pairs) - 1][:2]  # the shortest and the longest
    assert len(two[0].chosen_ids) != len(two[1].chosen_ids)
    model, _, adapter = _fresh()
    expected, _ = _measure(model, adapter, two)
    split = heal(model, adapter, two, HealConfig(batch_size=1, grad_accum=2, epochs=1, lr=1e-9, grad_ratio_every=0))
    assert split.events[0]["sft"] == pytest.approx(expected, rel=1e-5)


def test_steering_during_heal_and_bad_input_fail(pairs):
    model, tok, adapter = _fresh()
    pos, neg = world.contrast_set("joy", 8)
    v = sh.Vector.train(model, tok, pos, neg, position="mean")
    with v(model, C=5.0), pytest.raises(sh.SteerhealError, match="steering hook is active"):
        heal(model, adapter, pairs[:4])
    dropped = [type(p)(**{**p.__dict__, "kept": False}) for p in pairs[:3]]
    with pytest.raises(sh.SteerhealError, match="none of the 3 pairs was kept"):
        heal(model, adapter, dropped)
    other, _ = sh.toyworld.load()
    with pytest.raises(sh.SteerhealError, match="attached to another model"):
        heal(other, adapter, pairs[:4])
    for bad, match in [
        (dict(pref="kto"), "pref='kto'"),
        (dict(kl_ref="init"), "kl_ref='init'"),
        (dict(kl_agg="median"), "kl_agg='median'"),
        (dict(lr=0.0), "lr=0.0"),
        (dict(batch_size=0), "batch_size"),
        (dict(schedule="linear"), "schedule='linear'"),
    ]:
        with pytest.raises(sh.SteerhealError, match=match):
            HealConfig(**bad)
