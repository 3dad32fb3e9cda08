"""Memory-bounded completion scoring for training: no `[batch, length, vocab]` tensor, forward or backward.

The base transformer gives the final hidden states (after the final norm); only the positions that predict
completion tokens are gathered (`[n, hidden]`, n = completion tokens in the batch); the LM head (with the
model's logit soft-capping, as Gemma 2 has) runs on chunks of `chunk` positions in a fused autograd
function (`_ChunkScores`) that works in place in two `[chunk, vocab]` float32 buffers and, in the backward
pass, recomputes the logits and forms their gradient in closed form. Each chunk returns only per-token
numbers: the log-probability of the target token and, against reference hidden states, the token KL. A
262k vocabulary then costs two `chunk x vocab` buffers, not `batch x length x vocab` logits and their
log-softmax, exponent and products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from steerheal.errors import SteerhealError
from steerheal.lm.blocks import unwrap
from steerheal.lm.scoring import DIRECTIONS, f32
from steerheal.lm.texts import Batch
from steerheal.training.losses import predicting_mask


def decoder(model: nn.Module) -> nn.Module:
    """The transformer under the LM head. transformers' two accessors each fail somewhere (`get_decoder()`
    returns the whole model for GPT-2 and GPT-NeoX, `base_model` for Gemma3ForCausalLM), so take the first
    that is not the model itself."""
    inner = unwrap(model)
    for candidate in (inner.get_decoder(), inner.base_model):
        if candidate is not inner:
            return candidate
    raise SteerhealError(f"cannot find the transformer under the LM head of {type(inner).__name__}")


def final_hidden(model: nn.Module, batch: Batch) -> Float[Tensor, "batch length hidden"]:
    """The base transformer's last hidden state (after its final norm), without computing any logits."""
    out = decoder(model)(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    return out[0]


@dataclass(frozen=True)
class Positions:
    """The positions predicting completion tokens, flattened row-major (sequence 0's tokens first)."""

    rows: Int[Tensor, " n"]
    columns: Int[Tensor, " n"]  # column t - 1 predicts the completion token at column t
    targets: Int[Tensor, " n"]
    counts: Int[Tensor, " batch"]


def completion_positions(
    input_ids: Int[Tensor, "batch length"], completion_mask: Bool[Tensor, "batch length"]
) -> Positions:
    mask = predicting_mask(completion_mask)
    rows, columns = mask.nonzero(as_tuple=True)
    return Positions(rows, columns, input_ids[:, 1:][rows, columns], mask.sum(-1))


def gather(hidden: Float[Tensor, "batch length hidden"], positions: Positions) -> Float[Tensor, "n hidden"]:
    return hidden[positions.rows, positions.columns]


LSE_TEMP_ELEMENTS = 2**16  # logsumexp runs on row blocks whose temporary stays under 256 KiB of float32


@dataclass(frozen=True)
class HeadParts:
    """The LM head as parameters: logits = cap · tanh((h Wᵀ + b) / cap), or h Wᵀ + b without a cap."""

    weight: Tensor
    bias: Tensor | None
    cap: float | None


def head_parts(model: nn.Module) -> HeadParts:
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise SteerhealError(f"the LM head of {type(inner).__name__} is a {type(head).__name__}, not a Linear layer")
    cap = getattr(inner.config.get_text_config(), "final_logit_softcapping", None)
    return HeadParts(head.weight, head.bias, float(cap) if cap else None)


def _logits(hidden: Tensor, head: HeadParts) -> Tensor:
    """float32 (float64 stays float64) [rows, vocab] logits, soft-capped in place."""
    z = f32(torch.nn.functional.linear(hidden.to(head.weight.dtype), head.weight, head.bias))
    return z.div_(head.cap).tanh_().mul_(head.cap) if head.cap else z


def _logsumexp(x: Tensor) -> Tensor:
    rows = max(1, LSE_TEMP_ELEMENTS // x.shape[1])
    return torch.cat([torch.logsumexp(x[i : i + rows], -1) for i in range(0, x.shape[0], rows)])


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_j a_ij b_ij without a [rows, vocab] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class _ChunkScores(torch.autograd.Function):
    """log p(target) and token KL for one chunk, in at most two [chunk, vocab] float32 buffers, forward and
    backward. Backward recomputes the logits (nothing vocabulary-wide is saved) and forms the gradient of
    the logits in closed form:
        d log p_t / ds = onehot(t) − p
        d KL(p‖q) / ds = p ⊙ (log p − log q − KL)            (rev)
        d KL(q‖p) / ds = p − q                               (fwd)
    times 1 − tanh² under soft-capping. Gradients flow through the student's logits only: the reference's
    logits are constants, although computed with the same head."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_hidden, targets, cap, mode):  # type: ignore[override]
        head = HeadParts(weight, bias, cap)
        s = _logits(hidden, head)
        lse_s = _logsumexp(s)
        logp_t = s.gather(1, targets[:, None]).squeeze(1) - lse_s
        kl = logp_t.new_zeros(logp_t.shape)
        lse_r = logp_t.new_zeros(logp_t.shape)
        if mode != "none":
            r = _logits(ref_hidden, head)
            lse_r = _logsumexp(r)
            s.sub_(lse_s[:, None])  # log p
            r.sub_(lse_r[:, None])  # log q
            if mode == "rev":  # noqa: SIM108 (the two KLs, each with its formula)
                kl = _rowdot(r.neg_().add_(s), s.exp_())  # Σ p (log p − log q)
            else:
                kl = _rowdot(s.neg_().add_(r), r.exp_())  # Σ q (log q − log p)
            kl.clamp_(min=0.0)
            del r
        del s
        ctx.save_for_backward(hidden, weight, bias, ref_hidden, targets, lse_s, lse_r, kl)
        ctx.cap, ctx.mode = cap, mode
        return logp_t, kl

    @staticmethod
    def backward(ctx, g_lp, g_kl):  # type: ignore[override]
        hidden, weight, bias, ref_hidden, targets, lse_s, lse_r, kl = ctx.saved_tensors
        head = HeadParts(weight, bias, ctx.cap)
        g_lp = f32(g_lp) if g_lp is not None else lse_s.new_zeros(lse_s.shape)
        g_kl = f32(g_kl) if g_kl is not None else lse_s.new_zeros(lse_s.shape)
        g = _logits(hidden, head).sub_(lse_s[:, None])  # log p; becomes the gradient of the logits
        if ctx.mode == "none":
            g.exp_().mul_(-g_lp[:, None])
        else:
            r = _logits(ref_hidden, head).sub_(lse_r[:, None])  # log q
            if ctx.mode == "rev":
                r.neg_().add_(g).sub_(kl[:, None]).mul_(g_kl[:, None]).sub_(g_lp[:, None])
                g.exp_().mul_(r)
            else:
                g.exp_().mul_((g_kl - g_lp)[:, None]).sub_(r.exp_().mul_(g_kl[:, None]))
            del r
        g.scatter_add_(1, targets[:, None], g_lp[:, None])
        if ctx.cap:
            z = f32(torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias))
            g.mul_(z.div_(ctx.cap).tanh_().square_().neg_().add_(1.0))
            del z
        grad_hidden = (g.to(weight.dtype) @ weight).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (g.T @ f32(hidden)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = g.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def token_scores(
    head: HeadParts,
    hidden: Float[Tensor, "n hidden"],
    targets: Int[Tensor, " n"],
    ref_hidden: Float[Tensor, "n hidden"] | None = None,
    direction: str = "rev",
    chunk: int = 512,
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"] | None]:
    """(log p(target), token KL against `ref_hidden` or None) for every gathered position, `chunk` rows at
    a time; at most two [chunk, vocab] float32 buffers exist at once, in the forward and in the backward.
    The reference never receives gradients."""
    if direction not in DIRECTIONS:
        raise SteerhealError(f"direction={direction!r}: use one of {list(DIRECTIONS)}")
    if chunk < 1:
        raise SteerhealError(f"chunk={chunk} must be at least 1")
    mode = "none" if ref_hidden is None else direction
    logps, kls = [], []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk].to(hidden.device)
        r = h if ref_hidden is None else ref_hidden[start : start + chunk].detach()
        lp, kl = _ChunkScores.apply(h, head.weight, head.bias, r, t, head.cap, mode)
        logps.append(lp)
        kls.append(kl)
    return torch.cat(logps), (torch.cat(kls) if ref_hidden is not None else None)


def per_sequence(
    values: Float[Tensor, " n"], positions: Positions
) -> tuple[Float[Tensor, "batch tokens"], Bool[Tensor, "batch tokens"]]:
    """Flattened per-token values back to a padded `[batch, max tokens]` layout and its mask."""
    batch = positions.counts.shape[0]
    width = int(positions.counts.max())
    slot = torch.cat([torch.arange(int(c)) for c in positions.counts])
    padded = values.new_zeros(batch, width).index_put((positions.rows, slot), values)
    mask = torch.zeros(batch, width, dtype=torch.bool).index_put((positions.rows, slot), torch.tensor(True))
    return padded, mask


def sequence_sums(values: Float[Tensor, " n"], positions: Positions) -> Float[Tensor, " batch"]:
    return values.new_zeros(positions.counts.shape[0]).index_add(0, positions.rows, values)
