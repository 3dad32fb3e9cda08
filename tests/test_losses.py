"""Each loss against values computed by hand from its formula; gradient checks; prompts never count."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import steerheal as sh
from steerheal.lm.scoring import token_kl
from steerheal.training.losses import (
    aggregate_kl,
    dpo_loss,
    kl_barrier,
    lam_schedule,
    logodds,
    orpo_loss,
    sequence_logprobs,
    sft_nll,
)

B, L, V = 2, 6, 5


def _data(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=dtype)
    ids = torch.randint(0, V, (B, L), generator=g)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)  # prompts of 3 and 2
    return logits, ids, mask


def _log_softmax_by_hand(row: list[float]) -> list[float]:
    top = max(row)
    norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - norm for x in row]


def test_sequence_logprobs_and_sft_by_hand():
    logits, ids, mask = _data()
    sums, means, all_terms = [], [], []
    for b in range(B):
        terms = [_log_softmax_by_hand(logits[b, t - 1].tolist())[int(ids[b, t])] for t in range(1, L) if mask[b, t]]
        sums.append(sum(terms))
        means.append(sum(terms) / len(terms))
        all_terms += terms
    total, mean = sequence_logprobs(logits, ids, mask)
    assert total.tolist() == pytest.approx(sums, rel=1e-5) and mean.tolist() == pytest.approx(means, rel=1e-5)
    assert float(sft_nll(logits, ids, mask)) == pytest.approx(-sum(all_terms) / len(all_terms), rel=1e-5)


def test_dpo_and_orpo_by_hand():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-3.0, -10.0], [-5.0, -9.0], [-4.0, -9.5], [-4.5, -9.0]))
    margins = [((-3.0) - (-4.0)) - ((-5.0) - (-4.5)), ((-10.0) - (-9.5)) - ((-9.0) - (-9.0))]
    expected = [-math.log(1 / (1 + math.exp(-0.1 * m))) for m in margins]
    assert dpo_loss(pc, pr, rc, rr, beta=0.1).tolist() == pytest.approx(expected, rel=1e-6)
    mc, mr = torch.tensor([-0.5, -2.0]), torch.tensor([-1.5, -0.2])

    def lo(m):
        return m - math.log(1 - math.exp(m))

    expected = [
        -0.1 * math.log(1 / (1 + math.exp(-(lo(c) - lo(r))))) for c, r in zip([-0.5, -2.0], [-1.5, -0.2], strict=False)
    ]
    assert orpo_loss(mc, mr, lam=0.1).tolist() == pytest.approx(expected, rel=1e-6)


def test_logodds_is_stable_near_zero():
    m = torch.tensor([-1e-8, -1e-30, 0.0, -50.0], dtype=torch.float32, requires_grad=True)
    out = logodds(m)
    assert torch.isfinite(out).all()
    assert float(out[0].detach()) == pytest.approx(-1e-8 - math.log(1e-8), rel=1e-4)  # naive log(1 - exp(m)) gives -inf
    out.sum().backward()
    assert torch.isfinite(m.grad).all()


def test_token_kl_by_hand_both_directions():
    g = torch.Generator().manual_seed(1)
    s, r = torch.randn(4, V, generator=g), torch.randn(4, V, generator=g)
    for n in range(4):
        ls, lr = _log_softmax_by_hand(s[n].tolist()), _log_softmax_by_hand(r[n].tolist())
        rev = sum(math.exp(a) * (a - b) for a, b in zip(ls, lr, strict=False))
        fwd = sum(math.exp(b) * (b - a) for a, b in zip(ls, lr, strict=False))
        assert float(token_kl(s, r, "rev")[n]) == pytest.approx(rev, rel=1e-5)
        assert float(token_kl(s, r, "fwd")[n]) == pytest.approx(fwd, rel=1e-5)
    torch.testing.assert_close(
        token_kl(s, r, "rev"), F.kl_div(r.log_softmax(-1), s.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    )
    assert (token_kl(s, s) == 0).all()


def test_aggregate_kl_by_hand():
    kl = torch.tensor([[0.1, 0.4, 2.0, 9.0], [1.0, 3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert aggregate_kl(kl, mask, "mean").tolist() == pytest.approx([2.5 / 3, 2.0])
    assert aggregate_kl(kl, mask, "rmse").tolist() == pytest.approx([math.sqrt((0.01 + 0.16 + 4) / 3), math.sqrt(5)])
    assert aggregate_kl(kl, mask, "max").tolist() == pytest.approx([2.0, 3.0])
    # p95 by linear interpolation: sorted [0.1, 0.4, 2.0], rank 0.95 * 2 = 1.9 -> 0.4 + 0.9 * 1.6
    assert aggregate_kl(kl, mask, "p95").tolist() == pytest.approx([0.4 + 0.9 * 1.6, 1.0 + 0.95 * 2.0])
    with pytest.raises(sh.SteerhealError, match="agg='median'"):
        aggregate_kl(kl, mask, "median")


def test_kl_barrier_by_hand_and_finite_at_zero():
    logits, _ids, mask = _data(2)
    g = torch.Generator().manual_seed(3)
    ref = logits + 0.8 * torch.randn(B, L, V, generator=g)
    penalty, D, active = kl_barrier(logits, ref, mask, "rev", "mean", tau=0.05, lam=0.3)
    kl = token_kl(logits[:, :-1].reshape(-1, V), ref[:, :-1].reshape(-1, V)).view(B, L - 1)
    expected_d = [float(kl[b][mask[b, 1:]].mean()) for b in range(B)]
    assert D.tolist() == pytest.approx(expected_d, rel=1e-5)
    assert float(penalty) == pytest.approx(sum(0.3 * max(d - 0.05, 0) for d in expected_d) / B, rel=1e-5)
    assert active == sum(d > 0.05 for d in expected_d) / B
    for agg in ("mean", "rmse", "p95", "max"):  # D = 0: zero penalty, finite (zero) gradients
        student = logits.clone().requires_grad_(True)
        penalty, D, active = kl_barrier(student, logits, mask, agg=agg, tau=0.0, lam=1.0)
        penalty.backward()
        assert penalty.item() == 0.0 and (D == 0).all() and active == 0.0
        assert torch.isfinite(student.grad).all()


def test_gradients_match_finite_differences():
    logits, ids, mask = _data(4, dtype=torch.float64)
    ref = logits.detach() + 0.5
    ref[..., 0] -= 1.0
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sft_nll(t, ids, mask), (x,))
    assert torch.autograd.gradcheck(lambda t: sequence_logprobs(t, ids, mask)[1], (x,))
    for agg in ("mean", "rmse", "max"):
        assert torch.autograd.gradcheck(lambda t, a=agg: kl_barrier(t, ref, mask, agg=a, tau=0.0, lam=1.0)[0], (x,))
    m = torch.tensor([-0.3, -1.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: orpo_loss(t, torch.tensor([-0.8, -0.1], dtype=torch.float64)), (m,))
    assert torch.autograd.gradcheck(lambda t: dpo_loss(t, t * 2, t * 0.5, t - 1), (m,))


def test_prompt_tokens_never_enter_any_loss():
    logits, ids, mask = _data(5)
    changed_logits, changed_ids = logits.clone(), ids.clone()
    for b, prompt in enumerate([3, 2]):
        changed_logits[b, : prompt - 1] += 7.0  # positions that predict prompt tokens
        changed_ids[b, 1:prompt] = (changed_ids[b, 1:prompt] + 1) % V  # the prompt tokens themselves
    ref = logits + 0.3
    ref_changed = ref.clone()
    ref_changed[0, :2] -= 4.0
    assert torch.equal(sft_nll(logits, ids, mask), sft_nll(changed_logits, changed_ids, mask))
    assert torch.equal(sequence_logprobs(logits, ids, mask)[0], sequence_logprobs(changed_logits, changed_ids, mask)[0])
    assert torch.equal(
        kl_barrier(logits, ref, mask, tau=0.0)[1], kl_barrier(changed_logits, ref_changed, mask, tau=0.0)[1]
    )
    x = logits.clone().requires_grad_(True)
    (sft_nll(x, ids, mask) + kl_barrier(x, ref, mask, tau=0.0)[0]).backward()
    assert (x.grad[0, :2] == 0).all() and (x.grad[1, :1] == 0).all() and (x.grad[:, -1] == 0).all()


def test_bad_shapes_and_schedule():
    logits, ids, mask = _data()
    # under BEARTYPE=1 jaxtyping names the mismatched dimension first; without it steerheal's own check does
    with pytest.raises((sh.SteerhealError, TypeError), match="share|length"):
        sft_nll(logits, ids[:, :-1], mask[:, :-1])
    with pytest.raises(sh.SteerhealError, match="no completion tokens"):
        sft_nll(logits, ids, torch.zeros_like(mask))
    with pytest.raises(sh.SteerhealError, match="direction='both'"):
        token_kl(logits[0], logits[0], "both")
    assert lam_schedule(0.3, 0, 1.0) == 0.3 and lam_schedule(0.3, 2, 1.0) == pytest.approx(0.9)
    assert lam_schedule(0.3, 3, 0.0) == 0.3 and lam_schedule(0.2, 1, 2.0) == pytest.approx(0.8)
