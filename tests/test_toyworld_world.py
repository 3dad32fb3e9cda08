"""The toyworld language: vocabulary, grammar of generated stories, personas, generators, corpus folder."""

from __future__ import annotations

from collections import Counter

import pytest

from steerheal.toyworld import world as w
from steerheal.toyworld.metrics import grammar_ok, mood_rates, sentences, topic_consistency
from steerheal.toyworld.tokenizer import build_tokenizer


def test_every_generated_word_is_in_the_vocabulary_and_round_trips():
    tok = build_tokenizer()
    vocab = w.vocabulary()
    assert len(vocab) == len(set(vocab)) == len(tok)
    for d in w.training_dialogues(300, seed=1):
        text = tok.apply_chat_template(d.messages(), tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids and ids.count(tok.bos_token_id) == 1
        assert tok.decode(tok(d.story.text, add_special_tokens=False).input_ids) == d.story.text
    prompt = tok.apply_chat_template([{"role": "user", "content": "describe the garden ."}], add_generation_prompt=True)
    assert tok.convert_ids_to_tokens(prompt[-1]) == "<assistant>"


def test_generated_stories_are_grammatical_topical_and_moody_at_the_stated_rate():
    dialogues = w.training_dialogues(3000, seed=2)
    for d in dialogues[:500]:
        assert grammar_ok(d.story.text) == 1.0
        assert topic_consistency(d.story.text, d.story.topic) == 1.0
        assert w.N_SENTENCES[0] <= len(sentences(d.story.text)) <= w.N_SENTENCES[1]
    for mood in w.MOODS:
        rate = mood_rates([d.story.text for d in dialogues if d.story.mood == mood])
        assert rate[mood] == pytest.approx(w.MOOD_WORD_P, abs=0.03)
        assert rate["neutral"] == pytest.approx(1 - w.MOOD_WORD_P, abs=0.03)
    assert mood_rates([d.story.text for d in dialogues if d.story.mood == "neutral"])["neutral"] == 1.0


def test_personas_are_honoured_and_unprompted_moods_follow_base_frequencies():
    dialogues = w.training_dialogues(6000, seed=3)
    for d in dialogues:
        persona = next((m for m, text in w.PERSONAS.items() if text == d.system), None)
        if persona not in (None, "neutral"):
            assert d.story.mood == persona
    with_persona = sum(d.system is not None for d in dialogues) / len(dialogues)
    assert with_persona == pytest.approx(w.PERSONA_P, abs=0.03)
    free = Counter(d.story.mood for d in dialogues if d.system is None)
    for mood, p in w.BASE_MOODS.items():
        assert free[mood] / sum(free.values()) == pytest.approx(p, abs=0.03)


def test_generators_are_seeded_and_separate():
    assert w.training_dialogues(5, seed=0) == w.training_dialogues(5, seed=0)
    assert w.training_dialogues(5, seed=0) != w.training_dialogues(5, seed=1)
    assert w.training_dialogues(5) != w.heldout_dialogues(5)
    assert w.neutral_prompts(8, split="eval") != w.neutral_prompts(8, split="calibration")
    assert all(p.split()[-2] in w.TOPICS for p in w.neutral_prompts(20))
    held_out = set(w.neutral_prompts(300, split="eval"))
    assert len(held_out) == len(w.EVAL_COMBOS) == len(w.TOPICS)
    for split in ("calibration", "train0", "train1"):
        assert not held_out & set(w.neutral_prompts(300, split=split)), f"{split} uses held-out prompts"


def test_contrast_set_pairs_differ_only_in_mood_words():
    pos, neg = w.contrast_set("joy", 20, seed=4)
    for p, n in zip(pos, neg, strict=True):
        pw, nw = p.split(), n.split()
        assert len(pw) == len(nw)
        for a, b in zip(pw, nw, strict=True):
            if a != b:
                assert w.WORD_MOOD[a] == "joy" and w.WORD_MOOD[b] == "neutral"
                assert w.WORD_CATEGORY[a] == w.WORD_CATEGORY[b]
    assert mood_rates(neg)["neutral"] == 1.0 and mood_rates(pos)["joy"] > 0.4
    with pytest.raises(ValueError, match="not one of"):
        w.contrast_set("neutral", 3)


def test_write_corpus_layout(tmp_path):
    root = w.write_corpus(tmp_path / "corpus", seed=0, n_stories=4, n_scenarios=3)
    assert sorted(p.name for p in (root / "stories").iterdir()) == ["anger.txt", "calm.txt", "fear.txt", "joy.txt"]
    scenarios = sorted((root / "paired").iterdir())
    assert len(scenarios) == 3
    for scenario in scenarios:
        assert sorted(p.name for p in scenario.iterdir()) == [
            "anger.txt",
            "baseline.txt",
            "calm.txt",
            "fear.txt",
            "joy.txt",
        ]
    assert len((root / "stories" / "joy.txt").read_text().strip().split("\n\n")) == 4
    assert (root / "direct" / "_neutral.txt").is_file()
