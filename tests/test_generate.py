"""The sampler: greedy equals transformers' generate, sampling is seeded per prompt, steering applies."""

from __future__ import annotations

import pytest
import torch

import steerheal as sh
from conftest import tiny
from steerheal.lm.generate import decode, sample
from steerheal.lm.texts import encode, left_pad

PROMPTS = ["The harbour at noon", "A ferry left the harbour at noon, and gulls", "Rain."]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "qwen3", "phi3"])
def test_greedy_matches_transformers_generate_with_left_padding(arch):
    model, tok = tiny(arch)
    ours = sample(model, tok, PROMPTS, temperature=0, max_new_tokens=8, batch_size=3)
    batch = left_pad(encode(tok, PROMPTS, 512), tok.pad_token_id)
    with torch.no_grad():
        theirs = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    for mine, row in zip(ours, theirs[:, batch.input_ids.shape[1] :].tolist(), strict=True):
        cut = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
        assert mine == cut


def test_sampling_is_seeded_per_prompt_and_independent_of_batching():
    model, tok = tiny("qwen2")
    one = sample(model, tok, PROMPTS, seed=3, max_new_tokens=10, batch_size=1)
    three = sample(model, tok, PROMPTS, seed=3, max_new_tokens=10, batch_size=3)
    assert one == three
    assert sample(model, tok, PROMPTS, seed=4, max_new_tokens=10) != three
    assert sample(model, tok, PROMPTS[:1], seed=3, max_new_tokens=10) == three[:1]
    assert sample(model, tok, PROMPTS[1:], seed=3, max_new_tokens=10, first_index=1) == three[1:]
    assert all(len(c) <= 10 for c in three)
    assert all(isinstance(t, str) for t in decode(tok, three))


def test_top_p_small_is_greedy_and_steering_applies_to_sampling():
    model, tok = tiny("llama")
    greedy = sample(model, tok, PROMPTS, temperature=0, max_new_tokens=6)
    assert sample(model, tok, PROMPTS, seed=9, top_p=1e-6, max_new_tokens=6) == greedy
    v = sh.Vector.train(model, tok, ["I love it.", "Joy!", "Wonderful."], ["I hate it.", "Misery!", "Awful."])
    with v(model, C=300.0):
        steered = sample(model, tok, PROMPTS, temperature=0, max_new_tokens=6)
    assert steered != greedy


def test_sample_bad_input():
    model, tok = tiny("llama")
    with pytest.raises(sh.SteerhealError, match="temperature=-1"):
        sample(model, tok, PROMPTS, temperature=-1)
    with pytest.raises(sh.SteerhealError, match="top_p=0"):
        sample(model, tok, PROMPTS, top_p=0)
    with pytest.raises(sh.SteerhealError, match=r"prompts\[0\] is empty"):
        sample(model, tok, [""])


def test_completions_stop_at_any_token_the_model_declares():
    """Chat models end a turn with their own token (gemma-3-it: <end_of_turn>), listed in generation_config."""
    from steerheal.lm.generate import stop_ids

    model, tok = sh.tiny_model("llama", seed=6)
    free = sample(model, tok, PROMPTS, temperature=0, max_new_tokens=12)
    marker = free[0][2]  # a token the greedy completion reaches
    model.generation_config.eos_token_id = [tok.eos_token_id, marker]
    assert stop_ids(model, tok) == {tok.eos_token_id, marker}
    stopped = sample(model, tok, PROMPTS, temperature=0, max_new_tokens=12)
    assert stopped[0] == free[0][: free[0].index(marker) + 1]
