"""Residual-stream capture: layer convention, positions, batching, de-duplication, hook hygiene."""

from __future__ import annotations

import pytest
import torch

import steerheal as sh
from conftest import tiny
from steerheal.lm.texts import encode, left_pad

TEXTS = [
    "The cat sat on the mat.",
    "A ferry left the harbour at noon, and gulls followed it out past the wall.",
    "Rain.",
    ("<|bos|><|user|>Tell me a story.<|end|><|assistant|>", "Once there was a boat.<|end|>"),
    "Seven desks and one plant.",
]


def _reference(model, tok, text, layer):
    """hidden_states[layer + 1] of one unpadded forward, and the text's encoding."""
    (enc,) = encode(tok, [text], 512)
    with torch.no_grad():
        hs = model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
    return hs[layer + 1][0], enc


@pytest.mark.parametrize("arch", sh.TINY_ARCHS)
def test_capture_equals_hidden_states_at_each_position(arch):
    model, tok = tiny(arch)
    layers = [0, 1, 2]  # hidden_states[4] is after the final norm, so block 3 is checked separately
    for position in ("last", "prompt_end", "mean"):
        got = sh.capture(model, tok, TEXTS, layers, position, batch_size=4)
        for layer in layers:
            for i, text in enumerate(TEXTS):
                hidden, enc = _reference(model, tok, text, layer)
                if position == "last":
                    want = hidden[-1]
                elif position == "prompt_end":
                    want = hidden[enc.prompt_len - 1]
                else:
                    want = hidden[torch.tensor(enc.content)].mean(0)
                torch.testing.assert_close(got[layer][i], want, rtol=1e-5, atol=1e-5 * hidden.abs().max().item())


def test_last_block_is_read_before_the_final_norm():
    model, tok = tiny("llama")
    got = sh.capture(model, tok, TEXTS[:2], [3], "last")[3]
    with torch.no_grad():
        final = model(torch.tensor([encode(tok, TEXTS[:1], 512)[0].ids]), output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(model.model.norm(got[0]), final[0, -1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0], final[0, -1])


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "gpt2", "gpt_neox", "phi3"])
def test_batch_size_does_not_change_activations(arch):
    model, tok = tiny(arch)
    for position in ("last", "prompt_end", "mean"):
        one = sh.capture(model, tok, TEXTS, [1, 3], position, batch_size=1)
        four = sh.capture(model, tok, TEXTS, [1, 3], position, batch_size=4)
        for layer in (1, 3):
            # fp32 rounding grows with |h| (~25 here, one ulp ~2e-6): the bound is relative to the scale
            scale = one[layer].abs().max().item()
            assert (one[layer] - four[layer]).abs().max().item() <= 1e-5 * scale


def test_padding_never_leaks_in_float64():
    """In float64 a padding leak would show as an O(1) difference; rounding stays far below 1e-10."""
    model, tok = sh.tiny_model("qwen2", seed=2)
    model = model.double()
    for position in ("last", "prompt_end", "mean"):
        one = sh.capture(model, tok, TEXTS, [0, 2], position, batch_size=1)
        five = sh.capture(model, tok, TEXTS, [0, 2], position, batch_size=5)
        for layer in (0, 2):
            assert (one[layer] - five[layer]).abs().max().item() < 1e-10


def test_prompt_end_lands_on_the_assistant_tag():
    model, tok = tiny("qwen3")
    user = [{"role": "user", "content": "Tell me about the harbour."}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    texts = [(prompt, "The boats knocked against the pier.<|end|>"), prompt, ("Plain prompt", " and more")]
    encoded = encode(tok, texts, 512)
    batch = left_pad(encoded, tok.pad_token_id)
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    assert batch.input_ids[0, batch.prompt_end[0]] == assistant
    assert batch.input_ids[1, batch.prompt_end[1]] == assistant
    assert batch.input_ids[1, -1] == assistant  # a bare prompt: prompt_end is its last token
    got = sh.capture(model, tok, texts, [1], "prompt_end")[1]
    torch.testing.assert_close(got[0], got[1], rtol=1e-5, atol=1e-4)  # causal: the completion cannot matter
    assert encoded[0].ids.count(tok.bos_token_id) == 1  # the template's BOS is not doubled


def test_each_unique_text_is_forwarded_once_and_forward_stops_early():
    model, tok = tiny("llama")
    rows: list[int] = []
    late: list[int] = []
    embed = model.get_input_embeddings().register_forward_hook(lambda m, a, o: rows.append(o.shape[0]))
    last = sh.decoder_layers(model)[3].register_forward_hook(lambda m, a, o: late.append(1))
    try:
        texts = ["alpha", "beta", "alpha", ("alpha", " x"), "beta", ("alpha", " x")]
        got = sh.capture(model, tok, texts, [0, 1], "last", batch_size=8)
    finally:
        embed.remove()
        last.remove()
    assert sum(rows) == 3, "three unique texts, each forwarded once"
    assert late == [], "blocks after the deepest requested layer must not run"
    assert torch.equal(got[1][0], got[1][2]) and torch.equal(got[1][3], got[1][5])


def test_hooks_removed_also_when_forward_raises():
    model, tok = tiny("gemma3")
    blocks = sh.decoder_layers(model)
    before = [len(b._forward_hooks) for b in blocks]

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = blocks[0].register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        sh.capture(model, tok, TEXTS, [1, 2], "mean")
    handle.remove()
    assert [len(b._forward_hooks) for b in blocks] == before


def test_capture_tokens_matches_mean_and_skips_special_tokens():
    model, tok = tiny("phi3")
    tokens = sh.capture_tokens(model, tok, TEXTS, [1, 2])
    means = sh.capture(model, tok, TEXTS, [1, 2], "mean")
    for i, text in enumerate(TEXTS):
        (enc,) = encode(tok, [text], 512)
        assert tokens[1][i].shape == (sum(enc.content), 64)
        torch.testing.assert_close(tokens[2][i].mean(0), means[2][i], rtol=1e-5, atol=1e-5)
    assert tokens[1][0].dtype == torch.float32


def test_capture_bad_input():
    model, tok = tiny("llama")
    with pytest.raises(sh.SteerhealError, match="texts is empty"):
        sh.capture(model, tok, [], [1])
    with pytest.raises(sh.SteerhealError, match=r"texts\[1\] is empty"):
        sh.capture(model, tok, ["fine", "  "], [1])
    with pytest.raises(sh.SteerhealError, match=r"texts\[0\] is \d+ tokens, longer than the model's context of 512"):
        sh.capture(model, tok, ["word " * 600], [1])
    with pytest.raises(sh.SteerhealError, match="layer 4 is out of range .* 4 decoder blocks"):
        sh.capture(model, tok, ["fine"], [1, 4])
    with pytest.raises(sh.SteerhealError, match="layer -1 is out of range"):
        sh.capture(model, tok, ["fine"], [-1])
    with pytest.raises(sh.SteerhealError, match="position='first'"):
        sh.capture(model, tok, ["fine"], [1], "first")
    with pytest.raises(sh.SteerhealError, match="no content tokens"):
        sh.capture(model, tok, ["<|user|><|end|>"], [1], "mean")
    _, fresh = sh.tiny_model("llama")
    fresh.pad_token = None
    with pytest.raises(sh.SteerhealError, match="no pad token.*load_model"):
        sh.capture(model, fresh, ["fine"], [1])


def test_why_not_steering_vectors_extraction_absolute_positions_shift_when_batched():
    """steering-vectors forwards left-padded batches without position ids. RoPE models only see relative
    positions, but GPT-2's learned absolute positions move: a padded row is read wrongly. Ours is not."""
    from steering_vectors.train_steering_vector import extract_activations

    model, tok = tiny("gpt2")
    pairs = [
        ("Rain.", "Snow."),
        ("A ferry left the harbour at noon, and gulls followed.", "Crows followed."),
        ("Cat.", "Dog."),
    ]
    one, _ = extract_activations(model, tok, pairs, layers=[2], batch_size=1)
    three, _ = extract_activations(model, tok, pairs, layers=[2], batch_size=3)
    theirs = (torch.cat(one[2]) - torch.cat(three[2])).abs().max().item()
    texts = [p for p, _ in pairs]
    ours = sh.capture(model, tok, texts, [2], batch_size=1)[2] - sh.capture(model, tok, texts, [2], batch_size=3)[2]
    scale = torch.cat(one[2]).abs().max().item()
    assert theirs > 0.1 * scale, "steering-vectors' padded rows differ by a sizeable fraction of the scale"
    assert ours.abs().max().item() <= 1e-5 * scale
