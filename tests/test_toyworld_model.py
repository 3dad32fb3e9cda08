"""The shipped toyworld checkpoint: provenance, sampling, and the effects the method is judged on."""

from __future__ import annotations

import json

import pytest
import torch

import steerheal as sh
from steerheal.toyworld import checkpoint_dir
from steerheal.toyworld import report as R
from steerheal.toyworld.metrics import grammar_ok, mood_rates
from steerheal.toyworld.train import TrainConfig, train, weights_digest
from steerheal.toyworld.world import PERSONAS, contrast_set

N = 64


@pytest.fixture(scope="module")
def toy():
    return sh.toyworld.load()


def test_shipped_checkpoint_loads_like_any_model_and_matches_its_training_record(toy):
    model, tok = toy
    record = json.loads((checkpoint_dir() / "training.json").read_text())
    recorded = sh.Fingerprint.from_dict(record["fingerprint"], "training.json")
    loaded = sh.fingerprint(model)
    assert loaded.name == recorded.name == "toyworld-lm"  # name_or_path itself is wherever it is installed
    assert loaded.differences(recorded, "identity") == [] and loaded.differences(recorded, "precision") == []
    assert weights_digest(checkpoint_dir() / "model.safetensors") == record["weights_sha256"]
    assert type(model).__name__ == "LlamaForCausalLM" and 128 <= model.config.hidden_size <= 256
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok.chat_template
    assert len(sh.decoder_layers(model)) == record["config"]["n_layers"]


def test_training_is_deterministic_for_a_seed_and_leaves_threads_alone():
    config = TrainConfig(
        n_dialogues=96,
        hidden_size=32,
        n_layers=2,
        n_heads=2,
        intermediate_size=64,
        batch_size=32,
        warmup_steps=1,
        n_heldout=8,
        threads=1,
    )
    threads = torch.get_num_threads()
    a, _, report = train(config, progress=False)
    b, _, _ = train(config, progress=False)
    c, _, _ = train(TrainConfig(**{**config.__dict__, "seed": 1}), progress=False)
    assert torch.get_num_threads() == threads
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    assert report["tokens"] > 0 and report["steps"] == 3


def test_unsteered_stories_are_grammatical_and_on_topic(toy):
    model, tok = toy
    stories = sh.toyworld.sample(model, tok, N, seed=0)
    assert stories == sh.toyworld.sample(model, tok, N, seed=0), "sampling is reproducible for a seed"
    metrics = R.story_metrics(stories, R.prompt_topics(N, 0))
    assert metrics["grammar_ok"] >= 0.95 and metrics["topic"] >= 0.95
    # un-prompted moods stay near their training rates (joy 0.09, neutral 0.64); loose: 64 stories
    assert abs(metrics["rate_neutral"] - R.expected_rates()["neutral"]) < 0.15


def test_persona_prompt_conditions_the_mood(toy):
    model, tok = toy
    unsteered = mood_rates(sh.toyworld.sample(model, tok, N, seed=1))["joy"]
    joyful = mood_rates(sh.toyworld.sample(model, tok, N, seed=1, system=PERSONAS["joy"]))["joy"]
    assert joyful >= unsteered + 0.3


def test_joy_steering_moves_the_mood_then_breaks_the_grammar(toy):
    model, tok = toy
    pos, neg = contrast_set("joy", 64, seed=0)
    v = sh.Vector.train(model, tok, pos, neg, position="mean")
    with pytest.raises(sh.SteerhealError, match="no dose"):
        sh.toyworld.sample(model, tok, 2, seed=0, vector=v)
    v.coeff = R.prompt_norm(model, tok, v.layers, seed=0)
    unsteered = mood_rates(sh.toyworld.sample(model, tok, N, seed=2))["joy"]
    moderate = sh.toyworld.sample(model, tok, N, seed=2, vector=v, alpha=0.25)
    strong = sh.toyworld.sample(model, tok, N, seed=2, vector=v, alpha=2.0)
    assert mood_rates(moderate)["joy"] >= unsteered + 0.2
    assert sum(grammar_ok(s) for s in moderate) / N >= 0.9
    assert sum(grammar_ok(s) for s in strong) / N <= 0.5


def test_sample_bad_input(toy):
    model, tok = toy
    with pytest.raises(sh.SteerhealError, match="n=0"):
        sh.toyworld.sample(model, tok, 0, seed=0)
