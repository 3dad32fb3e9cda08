"""The memory-bounded training path equals the plain loss functions, in value and in gradient."""

from __future__ import annotations

import pytest
import torch

import steerheal as sh
from steerheal.lm.texts import encode, left_pad
from steerheal.training.bounded import (
    completion_positions,
    final_hidden,
    gather,
    head_parts,
    per_sequence,
    sequence_sums,
    token_scores,
)
from steerheal.training.losses import aggregate_kl, barrier, kl_barrier, sequence_logprobs, sft_nll

TEXTS = [
    ("<|bos|><|user|>Tell me about the harbour.<|end|><|assistant|>", "The boats knocked against the pier.<|end|>"),
    ("<|bos|><|user|>Rain?<|end|><|assistant|>", "It fell all night on the old roof, softly.<|end|>"),
    ("<|bos|><|user|>Describe a garden.<|end|><|assistant|>", "Beans.<|end|>"),
]


def _student(arch: str):
    """A tiny model with a GatedLoRA whose current round moves the logits (B perturbed)."""
    model, tok = sh.tiny_model(arch, seed=1)
    adapter = sh.GatedLoRA.attach(model, r=4, alpha=8, depth_band=(0.0, 1.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    encoded = encode(tok, TEXTS, 512)
    batch = left_pad(encoded, tok.pad_token_id)
    mask = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    width = batch.input_ids.shape[1]
    for row, e in enumerate(encoded):
        mask[row, width - len(e.ids) + e.prompt_len :] = True
    return model, adapter, batch, mask


def _grads(adapter, value):
    params = adapter.trainable_parameters()
    return torch.autograd.grad(value, params)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_bounded_path_equals_plain_functions(arch, chunk):
    model, adapter, batch, mask = _student(arch)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    with torch.no_grad(), adapter.reference("base"):
        ref_logits = model(**kwargs).logits
        ref_hidden = final_hidden(model, batch)
    logits = model(**kwargs).logits
    plain_sft = sft_nll(logits, batch.input_ids, mask)
    plain_sum, plain_mean = sequence_logprobs(logits, batch.input_ids, mask)
    plain_pen, plain_d, _ = kl_barrier(logits, ref_logits, mask, "rev", "rmse", tau=0.1, lam=0.5)

    positions = completion_positions(batch.input_ids, mask)
    head = head_parts(model)
    lp, kl = token_scores(
        head,
        gather(final_hidden(model, batch), positions),
        positions.targets,
        gather(ref_hidden, positions),
        "rev",
        chunk,
    )
    sft = -lp.mean()
    sums = sequence_sums(lp, positions)
    padded, kl_mask = per_sequence(kl, positions)
    pen, d, _ = barrier(aggregate_kl(padded, kl_mask, "rmse"), 0.1, 0.5)

    torch.testing.assert_close(sft, plain_sft, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums, plain_sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sums / positions.counts, plain_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d, plain_d, rtol=1e-4, atol=1e-5)
    assert float(plain_pen.detach()) > 0
    for ours, theirs in zip(_grads(adapter, sft + pen), _grads(adapter, plain_sft + plain_pen), strict=True):
        # float rounding in another summation order: bounded relative to the gradient's own scale
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def test_no_vocabulary_wide_tensor_beyond_one_chunk_is_kept_for_backward():
    model, adapter, batch, mask = _student("qwen3")
    vocab = model.config.vocab_size
    positions = completion_positions(batch.input_ids, mask)
    with torch.no_grad(), adapter.reference("base"):
        ref = gather(final_hidden(model, batch), positions)
    saved: list[tuple[int, ...]] = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    chunk = 4
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, kl = token_scores(
            head_parts(model), gather(final_hidden(model, batch), positions), positions.targets, ref, chunk=chunk
        )
    (lp.sum() + kl.sum()).backward()
    wide = [s for s in saved if s and s[-1] == vocab]
    assert positions.targets.numel() > chunk
    assert all(torch.Size(s).numel() <= chunk * vocab for s in wide), wide
    batch_logits = batch.input_ids.numel() * vocab
    assert all(torch.Size(s).numel() < batch_logits for s in saved)


@pytest.mark.parametrize("direction", ["none", "rev", "fwd"])
@pytest.mark.parametrize("cap", [None, 3.0])
def test_fused_chunk_gradients_match_finite_differences(direction, cap):
    """The closed-form backward of the fused head against numerical gradients, in float64."""
    from steerheal.training.bounded import HeadParts

    g = torch.Generator().manual_seed(7)
    n, hidden, vocab = 5, 4, 9
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    targets = torch.randint(0, vocab, (n,), generator=g)

    def scores(h_, w_, b_):
        lp, kl = token_scores(
            HeadParts(w_, b_, cap),
            h_,
            targets,
            None if direction == "none" else ref,
            "rev" if direction == "none" else direction,
            chunk=2,
        )
        return lp if kl is None else lp + 0.7 * kl

    if direction == "none":
        assert torch.autograd.gradcheck(scores, (h, weight, bias))
    else:  # the reference's logits are constants (no gradient), though computed with the same head
        assert torch.autograd.gradcheck(lambda h_: scores(h_, weight.detach(), bias.detach()), (h,))
