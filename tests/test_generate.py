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


def _per_sequence(trace: sh.read.monitor.Trace) -> list[torch.Tensor]:
    """Each sequence's scores at its real positions, in the order the model saw the sequences."""
    return [trace.scores[b][trace.mask[b]] for b in range(trace.scores.shape[0])]


def test_the_monitor_trace_of_a_sequence_does_not_depend_on_its_batch():
    """Issue 15: at batch > 1 a row that stopped was forwarded (its stop token, then pads) with attention 1,
    and the monitor counted those positions as real; alone, none of them is forwarded. Same sequences, same
    trace, with steerheal's sampler and with transformers' generate."""
    from steerheal.toyworld import world
    from steerheal.toyworld.load import chat_prompts

    model, tok = sh.toyworld.load()
    rows = torch.nn.functional.normalize(torch.randn(3, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    ro = sh.Readout(["a", "b", "c"], {1: rows, 3: rows.flip(0)}, {1: torch.ones(3), 3: torch.ones(3)}, "pca", "mean")
    prompts = chat_prompts(tok, world.neutral_prompts(6, seed=1))
    traces, ids = [], []
    for batch_size in (1, 6):
        with ro.monitor(model) as trace:
            ids.append(sample(model, tok, prompts, seed=0, max_new_tokens=40, batch_size=batch_size))
        traces.append(trace)
    assert ids[0] == ids[1] and len({len(c) for c in ids[0]}) > 1, "rows stop at different steps"
    lengths = [len(e.ids) for e in encode(tok, prompts, 512)]
    order = sorted(range(6), key=lambda i: -lengths[i])
    assert traces[1].mask.sum(1).tolist() == [lengths[i] + len(ids[0][i]) - 1 for i in order]
    for alone, batched in zip(_per_sequence(traces[0]), _per_sequence(traces[1]), strict=True):
        # padded vs unpadded forward of the same tokens: fp32 rounding, scores of magnitude ~3
        assert alone.shape == batched.shape and (alone - batched).abs().max() < 1e-4

    # transformers' generate pads a finished row with attention 1: the monitor ends the row at its stop token
    prompts = chat_prompts(tok, world.neutral_prompts(4, seed=2), system=world.PERSONAS["anger"])  # greedy: 3 rows
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)  # stop 7 steps before the 4th
    with ro.monitor(model) as trace:
        out = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    compared = 0
    for b, prompt in enumerate(prompts):
        one = tok([prompt], return_tensors="pt", add_special_tokens=False)
        with ro.monitor(model) as single:
            alone = model.generate(**one, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
        row = out[b][enc.attention_mask[b].bool().tolist() + [True] * (out.shape[1] - enc.input_ids.shape[1])]
        if not torch.equal(row[: alone.shape[1]], alone[0]):
            continue  # greedy ties broken differently by padding: not the same sequence
        compared += int(alone.shape[1] < out.shape[1] - enc.attention_mask[b].eq(0).sum())
        got = trace.scores[b][trace.mask[b]]
        assert got.shape == single.scores[0][single.mask[0]].shape
        assert (got - single.scores[0][single.mask[0]]).abs().max() < 1e-4
    assert compared == 3, "the rows that stopped before the longest were compared"
