"""Batched sampling with left padding, the KV cache and a seeded torch.Generator per prompt.

Each prompt gets its own generator, seeded from (seed, its index), so a prompt's completion does not
depend on which other prompts share its batch or on the batch size (up to float rounding of the logits).
Steering contexts apply to every forward call, prefill and cached steps alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.lm.blocks import context_length, model_device, unwrap
from steerheal.lm.texts import Text, encode, left_pad, length_sorted_batches, require_pad_token
from steerheal.log import progress_disabled
from steerheal.seeds import derived_seed


def stop_ids(model: nn.Module, tok: PreTrainedTokenizerBase | None) -> frozenset[int]:
    """Every token that ends a completion: the tokenizer's eos and whatever the model's generation config
    declares (chat models end a turn with their own token: gemma-3-it's <end_of_turn>, Llama 3's <|eot_id|>)."""
    ids = set() if tok is None or tok.eos_token_id is None else {int(tok.eos_token_id)}
    declared = getattr(getattr(unwrap(model), "generation_config", None), "eos_token_id", None)
    ids.update([declared] if isinstance(declared, int) else list(declared or []))
    return frozenset(ids)


def _next_tokens(
    logits: Float[Tensor, "batch vocab"],
    temperature: float,
    top_p: float,
    generators: list[torch.Generator],
) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keeps the token that crosses top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.stack([torch.multinomial(p.cpu(), 1, generator=g)[0] for p, g in zip(probs, generators, strict=True)])


@checked
@torch.no_grad()
def sample(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool | None = None,
    first_index: int = 0,
) -> list[list[int]]:
    """Completion ids per prompt (in prompt order). A completion that stopped ends with its stop token
    (`stop_ids`).

    `temperature=0` is greedy decoding. Prompts are strings (already templated) or (prompt, completion)
    pairs whose completion part is continued. Prompt i is sampled with the generator of (seed, first_index
    + i): sampling a list in two calls (the second with `first_index` = the length of the first) draws
    exactly what one call over the whole list would.
    """
    got = sample_shard(
        model, tok, prompts, seed, temperature, top_p, max_new_tokens, batch_size, progress, first_index, 0, 1
    )
    return [got[i] for i in range(len(prompts))]


@checked
@torch.no_grad()
def sample_shard(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool | None = None,
    first_index: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> dict[int, list[int]]:
    """{prompt index: completion ids} for one rank's share of `prompts`, as `sample` draws them: the batches of
    the length-sorted plan of all the prompts (the plan one process runs) numbered 0, 1, ..., batch b sampled by
    rank b % world_size. Every batch is formed exactly as in one process, with the generators of the global
    prompt indices, so the union over ranks is bit for bit what `sample` returns in one process."""
    if not 0 <= rank < world_size:
        raise SteerhealError(f"sample_shard: rank={rank} must be in [0, world_size={world_size})")
    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise SteerhealError(
            f"sample: temperature={temperature} (>= 0), top_p={top_p} (in (0, 1]), "
            f"max_new_tokens={max_new_tokens} (>= 1)"
        )
    stops = stop_ids(model, tok)
    if not stops:
        raise SteerhealError(
            "sample: neither the tokenizer nor the model declares an eos token, so a completion could never stop"
        )
    stop_tensor = torch.tensor(sorted(stops))
    pad_id = require_pad_token(tok)
    encoded = encode(tok, prompts, context_length(model) - max_new_tokens, what="prompts")
    device = model_device(model)
    plan = length_sorted_batches([len(e.ids) for e in encoded], batch_size)[rank::world_size]
    out: dict[int, list[int]] = {i: [] for rows in plan for i in rows}
    for rows in tqdm(plan, desc="sample", disable=progress_disabled(progress)):
        batch = left_pad([encoded[i] for i in rows], pad_id).to(device)
        generators = [torch.Generator().manual_seed(derived_seed("sample", seed, first_index + i)) for i in rows]
        mask, positions = batch.attention_mask, batch.position_ids
        result = model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            token = _next_tokens(result.logits[:, -1], temperature, top_p, generators).to(device)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            for k, row in enumerate(rows):
                if not done[k]:
                    out[row].append(int(token[k]))
            done |= torch.isin(token, stop_tensor.to(token.device))
            if done.all() or step == max_new_tokens - 1:  # the last sampled token is never forwarded
                break
            # a row that has stopped forwards its stop token, then pads, masked out: its later positions are
            # not real tokens (a monitor reads them as padding, as it would at batch size 1)
            mask = torch.cat([mask, (~done).to(mask.dtype)[:, None]], dim=-1)
            positions = positions[:, -1:] + 1
            result = model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=result.past_key_values,
                use_cache=True,
            )
    return out


def decode(tok: PreTrainedTokenizerBase, completions: Sequence[Sequence[int]]) -> list[str]:
    """Completion texts without special tokens."""
    return tok.batch_decode([list(c) for c in completions], skip_special_tokens=True)
