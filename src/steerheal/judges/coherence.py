"""The coherence judge: how surprising a completion is, given its prompt, to a model that did not write it.

The policy model's own perplexity of its own text is a poor judge (a steered or healed model finds its own
babble likely; the base rates any departure from itself as unlikely). An *independent* model (Gemma-3-270M
for the real presets: another family, another tokenizer, another training set) reads each completion after
its prompt, teacher-forced, and its loss on the completion tokens is the coherence score.

**Bits per byte**, not perplexity: total negative log-likelihood of the completion tokens in bits, divided
by the UTF-8 bytes of the completion text. Per-token losses depend on how the tokenizer cuts the text (a
262k-token vocabulary spends fewer, costlier tokens than a 49k one); per byte, two judges or two policies
with different tokenizers stay comparable. Scores are totals over all completions (Σ bits / Σ bytes), so a
long completion weighs by its length; `bits_per_byte_mean` gives each completion one vote.

**Never alone**: a language model's loss falls for repetitive text (the third "the cat sat on the mat" is
cheap), so a variant that loops looks *more* coherent. The judge therefore always returns distinct-2 and
word 3-gram repetition of the same completions beside the loss.

Memory: the final hidden states at the completion positions are gathered (`[n, hidden]`) and the LM head
runs on `chunk` of them at a time (`training.bounded.token_scores`), so no `[batch, length, vocab]` float32
tensor exists: at a 262,144-token vocabulary, `chunk=64` holds two 64 MiB buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.dose.filters import distinct_n, ngram_repetition
from steerheal.errors import SteerhealError
from steerheal.judges.judge import Pair, check_pairs, mean
from steerheal.lm.blocks import context_length, model_device
from steerheal.lm.texts import encode, left_pad, length_sorted_batches
from steerheal.training.bounded import completion_positions, final_hidden, gather, head_parts, token_scores

LN2 = math.log(2.0)


@torch.no_grad()
def completion_bits(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    pairs: Sequence[Pair],
    batch_size: int = 8,
    chunk: int = 64,
) -> Float[Tensor, " pairs"]:
    """Total NLL in bits of each completion's tokens given its prompt (NaN for an empty completion).

    Prompt and completion are tokenised separately by `tok` (`lm.texts.encode`), so the boundary is the
    text's, not a re-tokenisation's; only the positions that predict completion tokens are scored.
    """
    pairs = check_pairs(pairs)
    if batch_size < 1 or chunk < 1:
        raise SteerhealError(f"completion_bits: batch_size={batch_size} and chunk={chunk} must be at least 1")
    bits = torch.full((len(pairs),), math.nan, dtype=torch.float64)
    keep = [i for i, (_, c) in enumerate(pairs) if c.strip()]
    if not keep:
        return bits
    encoded = encode(tok, [pairs[i] for i in keep], context_length(model), what="judged pairs")
    for i, e in zip(keep, encoded, strict=True):
        if len(e.ids) == e.prompt_len:
            raise SteerhealError(f"judged pairs[{i}]: the completion {pairs[i][1]!r:.60} tokenises to nothing")
    head = head_parts(model)
    device = model_device(model)
    for rows in length_sorted_batches([len(e.ids) for e in encoded], batch_size):
        batch = left_pad([encoded[r] for r in rows], int(tok.pad_token_id)).to(device)
        positions = completion_positions(batch.input_ids, batch.completion_mask())
        hidden = gather(final_hidden(model, batch), positions)
        logp, _ = token_scores(head, hidden, positions.targets, chunk=chunk)
        nats = torch.zeros(len(rows), dtype=torch.float64).index_add_(
            0, positions.rows.cpu(), logp.double().cpu().neg()
        )
        for k, r in enumerate(rows):
            bits[keep[r]] = nats[k] / LN2
    return bits


def utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


class CoherenceJudge:
    """Coherence under an independent causal LM: bits per byte beside distinct-2 and word repetition.

    Scores: `bits_per_byte` (Σ bits / Σ UTF-8 bytes over non-empty completions), `bits_per_byte_mean` (the
    mean of per-completion ratios), `distinct_2` (distinct word bigrams over all, pooled as verify pools
    them), `word_repetition` (mean share of repeated word 3-grams), `n_scored`, `n_empty`. Lower bits per
    byte is more predictable text, which is coherent text *or* a loop: read it with the other two.
    """

    name = "coherence"

    def __init__(self, model: nn.Module, tok: PreTrainedTokenizerBase, batch_size: int = 8, chunk: int = 64) -> None:
        self.model, self.tok, self.batch_size, self.chunk = model, tok, batch_size, chunk

    def __call__(self, pairs: Sequence[Pair]) -> dict[str, float]:
        pairs = check_pairs(pairs)
        bits = completion_bits(self.model, self.tok, pairs, self.batch_size, self.chunk)
        scored = [(float(b), utf8_bytes(c)) for b, (_, c) in zip(bits.tolist(), pairs, strict=True) if c.strip()]
        total_bytes = sum(n for _, n in scored)
        texts = [c for _, c in pairs]
        return {
            "bits_per_byte": math.fsum(b for b, _ in scored) / total_bytes if total_bytes else math.nan,
            "bits_per_byte_mean": mean([b / n for b, n in scored]),
            "distinct_2": distinct_n(texts, 2),
            "word_repetition": mean([ngram_repetition(t.split(), 3) for t in texts]),
            "n_scored": float(len(scored)),
            "n_empty": float(len(texts) - len(scored)),
        }
