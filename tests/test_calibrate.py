"""iso-KL calibration on toyworld and every tiny architecture: accuracy, evaluation counts, errors."""

from __future__ import annotations

import pytest
import torch

import steerheal as sh
from conftest import tiny
from steerheal.dose.calibrate import MAX_EVALS, build_probe, kl_values, search, statistic
from steerheal.toyworld import world
from steerheal.toyworld.load import chat_prompts

POS = ["I love it.", "Joy to all!", "Wonderful day.", "What a delight."]
NEG = ["I hate it.", "Misery to all!", "Awful day.", "What a disgrace."]
QUESTIONS = ["Tell me a story.", "Describe a garden.", "What is rain?", "Hello there."]


@pytest.fixture(scope="module")
def toy():
    model, tok = sh.toyworld.load()
    pos, neg = world.contrast_set("joy", 64)
    prompts = chat_prompts(tok, world.neutral_prompts(16, 0, "calibration"))
    return model, tok, pos, neg, prompts


def _templated(tok, questions=QUESTIONS):
    return [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def test_toyworld_reaches_the_target_in_few_evaluations_and_smaller_targets_give_smaller_doses(toy):
    model, tok, pos, neg, prompts = toy
    doses = {}
    for target in (0.5, 1.0, 2.0):
        v = sh.Vector.train(model, tok, pos, neg, position="mean").calibrate(
            model, tok, prompts, target_kl=target, liveness_samples=8
        )
        record = v.calibration
        assert abs(record["value"] / target - 1) <= 0.05
        assert record["n_evals"] == len(record["history"]) <= 8
        assert v.coeff == record["c"] > 0
        assert 0.0 <= record["liveness"]["degenerate_fraction"] <= 1.0
        # the reported value is what the statistic gives at the dose, measured independently
        probe = build_probe(model, tok, prompts, 20)
        measured = statistic(kl_values(model, probe, lambda C, v=v: v(model, C=C), v.coeff), "p95")
        assert measured == pytest.approx(record["value"], rel=1e-4)
        doses[target] = v.coeff
    assert doses[0.5] < doses[1.0] < doses[2.0]


def test_every_statistic_and_determinism(toy):
    model, tok, pos, neg, prompts = toy
    for stat in ("mean", "rmse", "max"):
        v = sh.Vector.train(model, tok, pos, neg, position="mean")
        v.calibrate(model, tok, prompts[:8], target_kl=0.5, stat=stat, liveness_samples=0)
        assert abs(v.calibration["value"] / 0.5 - 1) <= 0.05 and v.calibration["stat"] == stat
        again = sh.Vector.train(model, tok, pos, neg, position="mean")
        again.calibrate(model, tok, prompts[:8], target_kl=0.5, stat=stat, liveness_samples=0)
        assert again.calibration["history"] == v.calibration["history"]


@pytest.mark.parametrize("arch", sh.TINY_ARCHS)
def test_every_tiny_architecture_calibrates_within_eight_evaluations(arch):
    model, tok = tiny(arch)
    v = sh.Vector.train(model, tok, POS, NEG).calibrate(model, tok, _templated(tok), 1.0, liveness_samples=0)
    assert abs(v.calibration["value"] - 1.0) <= 0.05 and v.calibration["n_evals"] <= 8


def test_sign_minus_one_calibrates_the_suppressing_direction(tmp_path):
    model, tok = tiny("llama")
    prompts = _templated(tok)
    v = sh.Vector.train(model, tok, POS, NEG).calibrate(model, tok, prompts, 1.0, sign=-1, liveness_samples=0)
    assert v.coeff < 0 and v.calibration["coeff"] == v.coeff and v.calibration["c"] == -v.coeff
    before = v.project(model, tok, prompts)
    with v.steer(model):
        assert (v.project(model, tok, prompts) < before).all()
    v.save(tmp_path / "v")
    assert sh.Vector.load(tmp_path / "v").calibration == v.calibration


def test_unreachable_target_and_bad_input_fail_clearly():
    model, tok = tiny("qwen3")
    v = sh.Vector.train(model, tok, POS, NEG)
    with pytest.raises(sh.SteerhealError, match=r"target_kl=500.0 is above what this statistic reaches: the largest"):
        v.calibrate(model, tok, _templated(tok), target_kl=500.0, liveness_samples=0)
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        with pytest.raises(sh.SteerhealError, match="prompts is empty"):
            v.calibrate(model, tok, [], liveness_samples=0)
        for bad, match in [
            (dict(stat="p50"), "stat='p50'"),
            (dict(target_kl=0.0), "target_kl=0.0"),
            (dict(tol=1.5), "tol=1.5"),
            (dict(sign=2), "sign=2"),
            (dict(n_tokens=0), "n_tokens=0"),
            (dict(method="newton"), "method='newton'"),
        ]:
            with pytest.raises(sh.SteerhealError, match=match):
                v.calibrate(model, tok, _templated(tok), liveness_samples=0, **bad)
    finally:
        handle.remove()
    assert forwards == [], "bad input is refused before any model call"


def test_search_on_a_known_curve_and_statistics():
    curve = lambda c: 0.01 * c**2  # noqa: E731  (KL grows like c^2 for small doses)
    found = search(curve, target=1.0, start=1.0, tol=0.01)
    assert abs(curve(found.c) - 1) <= 0.01 and found.n_evals <= 3
    bisected = search(curve, target=1.0, start=1.0, tol=0.01, method="bisect")
    assert abs(curve(bisected.c) - 1) <= 0.01 and bisected.n_evals > found.n_evals
    plateau = lambda c: 0.3 if c < 3 else 0.3 + (c - 3) ** 2  # noqa: E731  (flat, then reaches the target)
    found = search(plateau, target=1.0, start=0.5, tol=0.05)
    assert abs(plateau(found.c) - 1) <= 0.05, "a flat stretch below the target is not 'unreachable'"
    saturating = lambda c: 2 * (1 - 1 / (1 + c))  # noqa: E731  (never reaches 2)
    with pytest.raises(sh.SteerhealError, match="above what this statistic reaches"):
        search(saturating, target=3.0, start=1.0, tol=0.05)
    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    assert statistic(values, "p95") == pytest.approx(3.8)  # linear interpolation
    assert statistic(values, "mean") == 2.0 and statistic(values, "max") == 4.0
    assert statistic(values, "rmse") == pytest.approx((30 / 5) ** 0.5)
    assert MAX_EVALS >= 20
