"""The judges on fixed texts, the dominance logic on constructed curves, survival, and the frontier on a tiny model.

VADER's signs and its documented failure modes; bits per byte (equal to full-logits scoring, independent of
chunk and batch, lower for real toyworld text than for the same words shuffled, and lower still for a loop:
the reason it is never read alone); MiniLM relevance (padded = unpadded, on-topic > off-topic); the frontier's
records recomputed independently from the same seeds.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import sys
from functools import cache

import pytest
import torch

import steerheal as sh
from conftest import tiny
from steerheal.adapter.gated import GatedLoRA
from steerheal.dose.calibrate import statistic
from steerheal.errors import SteerhealError
from steerheal.judges import CoherenceJudge, RelevanceJudge, ToyworldJudge, VaderJudge
from steerheal.judges.coherence import completion_bits
from steerheal.judges.dominance import compare_curves
from steerheal.judges.frontier import FrontierConfig, frontier
from steerheal.judges.judge import judge_all
from steerheal.judges.relevance import embed, load_encoder
from steerheal.judges.survival import direction_survival
from steerheal.judges.trait import analyzer, split_sentences
from steerheal.lm.generate import decode, sample
from steerheal.lm.scoring import completion_batches, completion_token_logprobs, scored_log_probs, token_kl
from steerheal.lm.texts import encode, encode_prompts
from steerheal.read.steering import steering_active
from steerheal.toyworld.load import chat_prompts


@cache
def _toyworld():
    return sh.toyworld.load()


@cache
def _minilm():
    return load_encoder()


# ------------------------------------------------------------------ trait
def test_vader_signs_sentences_and_documented_failure_modes(monkeypatch):
    judge = VaderJudge()
    happy = judge([("How was it?", "It was a wonderful, happy day and I loved every minute.")])
    sad = judge([("How was it?", "It was a miserable, hopeless day and I hated every minute.")])
    flat = judge([("How was it?", "The table is brown and has four legs.")])
    assert happy["compound"] > 0.5 and sad["compound"] < -0.5 and flat["compound"] == 0.0
    assert happy["positive_fraction"] == 1 and sad["negative_fraction"] == 1 and flat["neutral_fraction"] == 1

    # length saturates the whole-text compound; the per-sentence mean does not grow with repetition
    one = "I am glad."
    long = judge([("p", " ".join([one] * 6))])
    assert long["compound"] > judge([("p", one)])["compound"] + 0.2
    assert long["compound_sentences"] == pytest.approx(judge([("p", one)])["compound"])
    assert split_sentences("Yes! Really? Fine.\nNext line") == ["Yes!", "Really?", "Fine.", "Next line"]
    # "!" and a chat preamble move the compound with no more trait in the answer
    plain = judge([("p", "The day was good.")])["compound"]
    assert judge([("p", "Sure! The day was good!")])["compound"] > plain

    # empty completions are counted, not scored as neutral; truncation applies before scoring
    mixed = judge([("p", "I love it."), ("p", "   ")])
    assert mixed["n_scored"] == 1 and mixed["n_empty"] == 1 and mixed["compound"] > 0
    assert math.isnan(judge([("p", "")])["compound"])
    assert VaderJudge(max_words=3)([("p", "The table is wonderful.")])["compound"] == 0.0

    with pytest.raises(SteerhealError, match="empty"):
        judge_all({"vader": judge}, [])
    # a missing extra is named
    analyzer.cache_clear()
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(SteerhealError, match=r"pip install 'steerheal\[judges\]'"):
        VaderJudge()
    monkeypatch.undo()
    analyzer.cache_clear()


# ------------------------------------------------------------------ coherence
@pytest.mark.parametrize("arch", ["gemma2", "gpt2"])  # gemma2: the LM head's logit soft-capping
def test_bits_equal_full_logits_scoring_whatever_chunk_and_batch(arch):
    model, tok = tiny(arch)
    pairs = [("hello there", " the cat sat"), ("a", ""), ("tell me a story about rain", " once upon a time it rained")]
    bits = completion_bits(model, tok, pairs, batch_size=2, chunk=3)
    assert math.isnan(bits[1]) and torch.isfinite(bits[[0, 2]]).all()
    encoded = encode(tok, [pairs[0], pairs[2]], 10**6)
    logps = completion_token_logprobs(
        model, tok, [e.ids[: e.prompt_len] for e in encoded], [e.ids[e.prompt_len :] for e in encoded]
    )
    want = torch.stack([-lp.double().sum() / math.log(2) for lp in logps])
    # float32 logits on both paths, summed in another order (the head applied to gathered rows vs the model's)
    torch.testing.assert_close(bits[[0, 2]], want, rtol=1e-5, atol=1e-4)
    # another batch (other padding) and chunk: float32 rounding only (~1e-7 relative per token logit)
    alone = completion_bits(model, tok, pairs, batch_size=1, chunk=512)
    torch.testing.assert_close(alone, bits, rtol=1e-6, atol=0, equal_nan=True)


def test_bits_per_byte_is_lower_for_real_text_and_lower_still_for_a_loop():
    model, tok = _toyworld()
    dialogues = sh.toyworld.world.heldout_dialogues(8)
    prompts = chat_prompts(tok, [d.user for d in dialogues])
    real = [(p, d.story.text) for p, d in zip(prompts, dialogues, strict=True)]
    rng = random.Random(0)
    shuffled = [(p, " ".join(rng.sample(t.split(), len(t.split())))) for p, t in real]
    loop = [(p, " ".join([t.split(" . ")[0] + " ."] * 4)) for p, t in real]
    judge = CoherenceJudge(model, tok, batch_size=4, chunk=16)
    r, s, lp = judge(real), judge(shuffled), judge(loop)
    assert all(math.isfinite(x["bits_per_byte"]) and x["bits_per_byte"] > 0 for x in (r, s, lp))
    assert r["bits_per_byte"] < 0.5 * s["bits_per_byte"], (r, s)
    # the loop costs fewer bits per byte than real text, and only distinct-2 and repetition say why
    assert lp["bits_per_byte"] < r["bits_per_byte"]
    assert lp["distinct_2"] < 0.5 * r["distinct_2"] and lp["word_repetition"] > r["word_repetition"] + 0.3
    total_bits = completion_bits(model, tok, real, 4, 16).sum().item()
    assert r["bits_per_byte"] == pytest.approx(total_bits / sum(len(t.encode()) for _, t in real), rel=1e-12)


# ------------------------------------------------------------------ relevance
def test_relevance_padded_equals_unpadded_and_on_topic_beats_off_topic():
    model, tok = _minilm()
    texts = ["Rain.", "The kettle whistled and she laughed at the joke her brother told about the cat."]
    batched = embed(model, tok, texts)
    alone = torch.cat([embed(model, tok, [t]) for t in texts])
    # left padding with explicit position ids: the padded row equals the unpadded text up to fp32 rounding
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-6)
    judge = RelevanceJudge(model, tok)
    prompts = ["How do I bake bread at home?", "What causes earthquakes?"]
    on = judge(
        list(
            zip(
                prompts,
                [
                    "Mix flour, water, yeast and salt, knead, let it rise and bake.",
                    "Tectonic plates slip along faults and release stored strain.",
                ],
                strict=True,
            )
        )
    )
    off = judge(
        list(
            zip(
                prompts,
                ["What a joyful, sunny, wonderful day it is!", "What a joyful, sunny, wonderful day it is!"],
                strict=True,
            )
        )
    )
    assert on["relevance"] > off["relevance"] + 0.2 and on["n_scored"] == 2
    assert judge([("q", "")])["n_empty"] == 1


def test_toyworld_judge_reads_the_truth():
    joy = sh.toyworld.world.contrast_set("joy", 4, 0)[0]
    judged = judge_all({"toyworld": ToyworldJudge("joy", "anger")}, [("p", t) for t in joy])["toyworld"]
    assert judged["mood_rate"] > 0.5 and judged["grammar_ok"] > 0.9 and judged["off_target_mood_rate"] < 0.1
    with pytest.raises(SteerhealError, match="not a toyworld mood"):
        ToyworldJudge("glee")


# ------------------------------------------------------------------ dominance and survival
def test_dominance_on_constructed_curves():
    steering = [(0.01, 0.1), (0.1, 0.3), (1.0, 0.5)]
    above = compare_curves([(0.02, 0.3), (0.5, 0.7)], steering)
    assert above["verdict"] == "student" and above["overlap"] == pytest.approx([0.02, 0.5])
    # log-KL interpolation: steering at KL 0.02 is 0.1 + 0.2 · log(2)/log(10)
    first = above["points"][0]
    assert first["steering"] == pytest.approx(0.1 + 0.2 * math.log(2) / math.log(10))
    assert compare_curves([(0.02, 0.0), (0.5, 0.1)], steering)["verdict"] == "steering"

    # a crossing: student 0.2 -> 0.4 over KL 0.01 -> 1 (log-linear), steering 0.1, 0.3, 0.5
    crossing = compare_curves([(0.01, 0.2), (1.0, 0.4)], steering)
    assert crossing["verdict"] == "mixed"
    (a, b) = crossing["intervals"]
    assert (a["better"], b["better"]) == ("student", "steering") and a["to"] == pytest.approx(b["from"])
    # difference = 0.1 - 0.1·u on [0.01, 0.1] (u = log10(kl / 0.01)), zero at u = 1: KL = 0.1
    assert a["to"] == pytest.approx(0.1)
    assert "mixed" in crossing["reading"]

    # ranges that do not meet: no dominance declared, both ranges reported
    apart = compare_curves([(5.0, 0.9), (9.0, 1.0)], steering)
    assert apart["verdict"] == "no_overlap" and apart["intervals"] == [] and apart["overlap"] is None
    assert apart["ranges"]["student"] == pytest.approx([5.0, 9.0]) and "do not overlap" in apart["reading"]
    # KL 0 (the base) is dropped on a log axis and counted; a linear axis keeps it
    dropped = compare_curves([(0.0, 0.0), (0.05, 0.3), (0.5, 0.6)], steering)
    assert dropped["dropped"] == {"student": 1, "steering": 0}
    # a shared origin (difference 0) does not split the verdict; a difference inside the tie band is a tie
    assert compare_curves([(0.0, 0.0), (1.0, 1.0)], [(0.0, 0.0), (1.0, 0.5)], log_x=False)["verdict"] == "student"
    close = ([(0.1, 0.305), (1.0, 0.505)], [(0.1, 0.3), (1.0, 0.5)])
    assert compare_curves(*close)["verdict"] == "student"
    assert compare_curves(*close, tie=0.01)["verdict"] == "tie"
    assert compare_curves([(float("nan"), 1.0)], steering)["verdict"] == "no_overlap"
    json.dumps(crossing, allow_nan=False)


def test_direction_survival_against_the_ceiling():
    ok = direction_survival({3: 0.9, 4: 0.8}, {3: 0.8, 4: 0.8, 5: 0.1})
    assert ok["within_noise"] and ok["relative"] == pytest.approx(0.85 / 0.8) and set(ok["per_layer"]) == {"3", "4"}
    moved = direction_survival({3: 0.4}, {3: 0.8})
    assert not moved["within_noise"] and moved["relative"] == pytest.approx(0.5) and "50%" in moved["reading"]
    assert direction_survival({3: 0.75}, {3: 0.8}, tolerance=0.1)["within_noise"]
    assert direction_survival({3: 0.4}, {3: -0.1})["relative"] is None
    with pytest.raises(SteerhealError, match="no layer"):
        direction_survival({1: 0.5}, {2: 0.5})


# ------------------------------------------------------------------ the frontier
class LetterJudge:
    """A trait a tiny random model can move: the share of the letter "e" in the completion."""

    name = "letters"

    def __call__(self, pairs):
        texts = "".join(c for _, c in pairs)
        return {"e_rate": texts.count("e") / len(texts) if texts else math.nan}


def test_frontier_on_a_tiny_model_recomputes_from_the_same_seeds():
    model = copy.deepcopy(tiny("llama")[0])
    tok = tiny("llama")[1]
    adapter = GatedLoRA.attach(model, r=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    teacher = sh.Vector.train(
        model, tok, ["happy day", "joy and sun"], ["sad night", "gloom and rain"], [1, 2], "mean_diff", "last"
    )
    teacher.coeff = 4.0
    prompts = ["hello there", "what is the weather like", "tell me a story"]
    judge_prompts = ["hello", "weather?", "a story"]
    config = FrontierConfig(max_new_tokens=8, kl_tokens=6, batch_size=2, chunk=16, trait="letters.e_rate", n_samples=3)
    judges = {
        "letters": LetterJudge(),
        "coherence": CoherenceJudge(*tiny("gpt2"), batch_size=2, chunk=16),
        "relevance": RelevanceJudge(*_minilm()),
    }
    gates = [r.gate for r in adapter.rounds]
    result = frontier(model, tok, adapter, teacher, prompts, 3, config, judges, judge_prompts)

    json.dumps(result, allow_nan=False)  # stored as an event: valid JSON, non-finite as null
    assert [r.gate for r in adapter.rounds] == gates and not steering_active(model)
    names = [r["variant"] for r in result["variants"]]
    assert names == ["base", *(f"steering@{a:g}" for a in config.alphas), *(f"student@{d:g}" for d in config.dials)]
    by = {r["variant"]: r for r in result["variants"]}
    assert by["base"]["kl_own"]["p95"] == 0 and by["base"]["trait_shift"] == 0
    greedy_kl = [by[f"steering@{a:g}"]["kl_greedy"]["p95"] for a in config.alphas]
    assert all(0 < a < b for a, b in itertools.pairwise(greedy_kl)), greedy_kl

    # the student's record, recomputed by hand from the same seed: samples, trait, both KL views
    record = by["student@1.5"]
    with adapter.dial(1.5):
        ids = sample(model, tok, prompts, 3, max_new_tokens=8, batch_size=2)
    texts = decode(tok, ids)
    assert [s["completion"] for s in record["samples"]] == texts
    assert [s["prompt"] for s in record["samples"]] == judge_prompts
    assert record["trait"] == pytest.approx(LetterJudge()(list(zip(prompts, texts, strict=True)))["e_rate"])
    assert record["trait_shift"] == pytest.approx(record["trait"] - by["base"]["trait"])
    prompt_ids = encode_prompts(tok, prompts)
    with adapter.reference("base"):
        greedy = sample(model, tok, prompts, 3, temperature=0, max_new_tokens=6, batch_size=2)
    for view, completions in (("kl_own", ids), ("kl_greedy", greedy)):
        values = []
        for item in completion_batches(tok, prompt_ids, completions, 2):
            with torch.no_grad(), adapter.reference("base"):
                ref = scored_log_probs(model, item)
            with torch.no_grad(), adapter.dial(1.5):
                values.append(token_kl(scored_log_probs(model, item), ref))
        # full logits vs the chunked head on gathered rows: float32 rounding of KLs of size ~0.1-1
        assert record[view]["p95"] == pytest.approx(statistic(torch.cat(values), "p95"), rel=1e-4, abs=1e-6)
    coherence = judges["coherence"](list(zip(judge_prompts, texts, strict=True)))
    assert record["judges"]["coherence"] == pytest.approx(coherence)
    assert record["relative"]["relevance.relevance"] == pytest.approx(
        record["judges"]["relevance"]["relevance"] / by["base"]["judges"]["relevance"]["relevance"]
    )

    # comparisons on every axis judged, and the summary the targets read
    assert set(result["comparisons"]) == {"kl_own", "kl_greedy", "coherence", "relevance"}
    assert all(
        c["verdict"] in ("student", "steering", "tie", "mixed", "no_overlap") for c in result["comparisons"].values()
    )
    summary = result["summary"]
    shift = by["steering@1"]["trait_shift"]
    want = by["student@1"]["trait_shift"] / shift if abs(shift) >= config.retain_floor else None
    assert summary["retain_at_c_star"] == (pytest.approx(want) if want is not None else None)
    assert summary["matched_kl"]["kl_own"] == result["comparisons"]["kl_own"]["verdict"]

    with pytest.raises(SteerhealError, match="judge named 'vader'"):
        frontier(model, tok, adapter, teacher, prompts, 3, FrontierConfig(), {"letters": LetterJudge()})
    with pytest.raises(SteerhealError, match="alphas"):
        FrontierConfig(alphas=(-1.0, 1.0))

    # a plain dial sweep (`steerheal dial`): no steering curve, so no comparison is declared
    sweep_config = FrontierConfig(
        alphas=(),
        dials=(0.0, 1.0),
        max_new_tokens=4,
        kl_tokens=4,
        trait="letters.e_rate",
        coherence=None,
        relevance=None,
    )
    sweep = frontier(model, tok, adapter, teacher, prompts[:1], 3, sweep_config, {"letters": LetterJudge()})
    assert [r["variant"] for r in sweep["variants"]] == ["base", "student@0", "student@1"]
    assert sweep["variants"][1]["kl_greedy"]["p95"] == 0.0 and sweep["variants"][1]["trait_shift"] == 0.0
    assert sweep["comparisons"]["kl_own"]["verdict"] == "no_overlap" and "retain_at_c_star" not in sweep["summary"]
