"""Preference pairs on toyworld and tiny models: records, ids, filters, reproducibility, the dose walk."""

from __future__ import annotations

import pytest

import steerheal as sh
from conftest import tiny
from steerheal.dose.config import DoseConfig
from steerheal.dose.filters import FilterConfig
from steerheal.dose.pairs import SamplingConfig, completion_checks, make_pairs, read_pairs, write_pairs
from steerheal.dose.walk import dose_walk, walk_and_pair
from steerheal.lm.texts import encode
from steerheal.toyworld import world
from steerheal.toyworld.load import chat_prompts


@pytest.fixture(scope="module")
def toy():
    model, tok = sh.toyworld.load()
    pos, neg = world.contrast_set("joy", 64)
    v = sh.Vector.train(model, tok, pos, neg, position="mean")
    v.calibrate(model, tok, chat_prompts(tok, world.neutral_prompts(16, 0, "calibration")), 1.0, liveness_samples=0)
    return model, tok, v, chat_prompts(tok, world.neutral_prompts(32, 0, "train"))


def test_pairs_are_exact_token_records_and_reproducible(toy, tmp_path):
    model, tok, v, prompts = toy
    pairs = make_pairs(model, tok, v, prompts[:12], alpha=1.0, seed=3)
    again = make_pairs(model, tok, v, prompts[:12], alpha=1.0, seed=3)
    assert [p.chosen_ids for p in pairs] == [p.chosen_ids for p in again]
    assert [p.chosen_ids for p in pairs] != [p.chosen_ids for p in make_pairs(model, tok, v, prompts[:12], seed=4)]
    for p, prompt in zip(pairs, prompts, strict=False):
        assert p.prompt == prompt and p.prompt_ids == list(encode(tok, [prompt], 128)[0].ids)
        assert p.dose == {"alpha": 1.0, "coeff": v.coeff, "C": v.coeff}
        assert p.chosen == tok.decode(p.chosen_ids, skip_special_tokens=True)
        assert p.kept == (p.reasons == [])
        if p.kept:
            assert p.chosen_ids[-1] == tok.eos_token_id, "the end-of-turn token is part of the completion"
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert read_pairs(tmp_path / "pairs.jsonl") == pairs
    no_eos = make_pairs(model, tok, v, prompts[:4], alpha=1.0, seed=3, include_eos=False)
    assert all(tok.eos_token_id not in p.chosen_ids for p in no_eos)
    assert [p.chosen_ids for p in no_eos] == [
        p.chosen_ids[:-1] if p.chosen_ids[-1] == tok.eos_token_id else p.chosen_ids for p in pairs[:4]
    ]


def test_strong_steering_is_dropped_more_often_than_unsteered_samples(toy):
    model, tok, v, prompts = toy
    pairs = make_pairs(model, tok, v, prompts, alpha=2.5, seed=0)
    steered_drop = sum(not p.kept for p in pairs) / len(pairs)
    eos = tok.eos_token_id
    unsteered = completion_checks(
        model,
        tok,
        [p.prompt_ids for p in pairs],
        [p.rejected_ids for p in pairs],
        [bool(p.rejected_ids) and p.rejected_ids[-1] == eos for p in pairs],
        FilterConfig(),
    )
    unsteered_drop = sum(bool(c.reasons) for c in unsteered) / len(unsteered)
    assert steered_drop >= 0.5 and unsteered_drop <= 0.1 and steered_drop > unsteered_drop
    moderate = make_pairs(model, tok, v, prompts, alpha=1.0, seed=0)
    assert sum(p.kept for p in moderate) / len(moderate) >= 0.7


def test_dose_walk_lowers_alpha_then_fails_fast(toy):
    model, tok, v, prompts = toy
    walk = dose_walk(
        model, tok, v, prompts, DoseConfig(alpha=4.0, alpha_min=0.25, walk_factor=0.5, keep_target=0.6, probe_size=12)
    )
    assert walk.alpha < 4.0 and walk.keep_rates[0] == (4.0, 0.0) and walk.keep_rates[-1][1] >= 0.6
    whole = make_pairs(model, tok, v, prompts[:20], walk.alpha, seed=0)
    reused = walk_and_pair(model, tok, v, prompts[:20], walk, seed=0)
    for a, b in zip(reused, whole, strict=True):  # reusing the probe changes nothing but scoring batches
        assert (a.chosen_ids, a.rejected_ids, a.kept, a.reasons) == (b.chosen_ids, b.rejected_ids, b.kept, b.reasons)
        assert a.chosen_tail_ppl == pytest.approx(b.chosen_tail_ppl, rel=1e-5)
    impossible = FilterConfig(max_tail_ppl=1.0)
    with pytest.raises(sh.SteerhealError, match=r"no usable data.*alpha 1: 0%.*alpha 0.5: 0%"):
        dose_walk(model, tok, v, prompts, DoseConfig(alpha_min=0.5, walk_factor=0.5, probe_size=6), filters=impossible)
    with pytest.raises(sh.SteerhealError, match="0 < walk_factor < 1"):
        dose_walk(model, tok, v, prompts, DoseConfig(walk_factor=1.5))


def test_tiny_models_fail_every_default_filter_and_pass_the_loosened_preset():
    model, tok = tiny("qwen3")
    v = sh.Vector.train(model, tok, ["I love it.", "Joy!", "Wonderful."], ["I hate it.", "Misery!", "Awful."])
    v.coeff = 20.0
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("Tell me a story.", "Describe a garden.", "What is rain?")
    ]
    sampling = SamplingConfig(max_new_tokens=12)
    strict = make_pairs(model, tok, v, prompts, sampling=sampling)
    loose = make_pairs(model, tok, v, prompts, sampling=sampling, filters=FilterConfig().loosened())
    assert not any(p.kept for p in strict) and all(p.kept for p in loose)


def test_pairs_bad_input(toy, tmp_path):
    model, tok, v, prompts = toy
    undosed = sh.Vector(v.directions, v.norms, v.method, v.position)
    with pytest.raises(sh.SteerhealError, match="no dose"):
        make_pairs(model, tok, undosed, prompts)
    with pytest.raises(sh.SteerhealError, match="prompts is empty"):
        make_pairs(model, tok, v, [])
    (tmp_path / "bad.jsonl").write_text('{"format_version": 1, "prompt": "x"}\n')
    with pytest.raises(sh.SteerhealError, match="a pair lacks"):
        read_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(sh.SteerhealError, match="broken.jsonl:1 is not valid JSON"):
        read_pairs(tmp_path / "broken.jsonl")


def test_unfinished_completions_are_cut_at_their_last_sentence_end(toy, tmp_path):
    """A completion that hits max_new_tokens is cut back to its last sentence end (ids, never re-tokenised
    text), trained without an end-of-turn token, and the cut is recorded in pairs.jsonl."""
    from steerheal.dose.filters import ends_a_sentence
    from steerheal.dose.pairs import cut_at_sentence_end
    from steerheal.lm.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = tok("The cat sat on the mat. Then the dog ran to the", add_special_tokens=False)["input_ids"]
    cut = cut_at_sentence_end(tok, ids, min_tokens=2)
    assert tok.decode(cut) == "The cat sat on the mat." and ids[: len(cut)] == cut
    assert cut_at_sentence_end(tok, tok("Version 3.5 of the", add_special_tokens=False)["input_ids"], 1) is None
    whole = tok("It rained. It stopped!", add_special_tokens=False)["input_ids"]
    assert cut_at_sentence_end(tok, whole, 1) == whole
    assert cut_at_sentence_end(tok, ids, min_tokens=len(ids)) is None  # too short once cut
    assert ends_a_sentence('He said "go."', 'He said "go." Then') and not ends_a_sentence("3.", "3.5")

    model, tok, v, prompts = toy
    sampling = SamplingConfig(max_new_tokens=14)  # toyworld stories run longer: most hit the limit
    plain = make_pairs(model, tok, v, prompts[:16], seed=3, sampling=sampling)
    cut_filters = FilterConfig(cut_unfinished=True)
    pairs = make_pairs(model, tok, v, prompts[:16], seed=3, sampling=sampling, filters=cut_filters)
    unfinished = [p for p in plain if p.chosen_ids[-1] != tok.eos_token_id]
    assert unfinished and all(any("unfinished" in r for r in p.reasons) for p in unfinished)
    was_cut = [p for p in pairs if any(n.startswith("chosen: no end-of-turn") for n in p.notes)]
    assert was_cut and sum(p.kept for p in pairs) > sum(p.kept for p in plain)
    for p, before in zip(pairs, plain, strict=True):
        assert before.chosen_ids[: len(p.chosen_ids)] == p.chosen_ids  # a prefix of what was sampled
        if p in was_cut:
            assert p.chosen_ids[-1] != tok.eos_token_id and p.chosen.rstrip().endswith((".", "!", "?"))
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert read_pairs(tmp_path / "pairs.jsonl") == pairs
