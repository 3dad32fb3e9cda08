"""Texts to token ids to left-padded batches, the one way every steerheal forward pass is fed.

A text is a prompt (`str`) or a `(prompt, completion)` pair. The two parts are tokenised separately and
their ids concatenated, so the boundary never shifts the way re-tokenising a joined string can. A part
that already starts with the tokenizer's BOS text (a chat template put it there) is tokenised without
adding another BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from steerheal.errors import SteerhealError

Text = str | tuple[str, str]


@dataclass(frozen=True)
class Encoded:
    """One text as ids: `prompt_len` ids of prompt, then the completion; `content` marks the ids `mean` and `all`
    pool (see `content_marks`)."""

    ids: tuple[int, ...]
    prompt_len: int
    content: tuple[bool, ...]


@dataclass(frozen=True)
class Batch:
    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    position_ids: Int[Tensor, "batch seq"]
    content_mask: Bool[Tensor, "batch seq"]
    prompt_end: Int[Tensor, " batch"]  # column of each row's last prompt token

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.attention_mask,
                    self.position_ids,
                    self.content_mask,
                    self.prompt_end,
                )
            )
        )

    def completion_mask(self) -> Bool[Tensor, "batch seq"]:
        """True at every column after a row's prompt: its completion tokens (none for a plain text)."""
        return torch.arange(self.input_ids.shape[1], device=self.prompt_end.device) > self.prompt_end[:, None]


def require_pad_token(tok: PreTrainedTokenizerBase) -> int:
    if tok.pad_token_id is None:
        raise SteerhealError(
            "the tokenizer has no pad token, so texts cannot be batched; load it with steerheal.load_model "
            "(which sets one and logs it) or set tok.pad_token = tok.eos_token yourself"
        )
    return int(tok.pad_token_id)


def _ids(tok: PreTrainedTokenizerBase, part: str, first: bool) -> list[int]:
    bos = tok.bos_token
    add_special = first and not (bos and part.startswith(bos))
    return list(tok(part, add_special_tokens=add_special)["input_ids"])


def content_marks(ids: Sequence[int], special: set[int]) -> tuple[bool, ...]:
    """Which ids are content: not special, and not the first position. The first position is the attention sink
    whether or not it is a BOS: SmolLM2 adds none, and from block 11 its first token carries ~22,600 in one hidden
    dimension (other tokens ~60), so a mean over it reads that token instead of the text (docs/readouts.md). A text
    of one token keeps it."""
    marks = [i not in special for i in ids]
    if sum(marks) > 1:
        marks[0] = False
    return tuple(marks)


def encode(tok: PreTrainedTokenizerBase, texts: Sequence[Text], max_len: int, what: str = "texts") -> list[Encoded]:
    """Every text as `Encoded`; an empty text or one longer than `max_len` tokens is an error naming it."""
    require_pad_token(tok)
    special = set(tok.all_special_ids)
    out = []
    for i, text in enumerate(texts):
        prompt, completion = (text, "") if isinstance(text, str) else text
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise SteerhealError(f"{what}[{i}] must be a string or a (prompt, completion) pair of strings")
        if not prompt.strip():
            raise SteerhealError(f"{what}[{i}] is empty; remove it or give it content")
        ids = _ids(tok, prompt, first=True)
        prompt_len = len(ids)
        if completion:
            ids += _ids(tok, completion, first=False)
        if len(ids) > max_len:
            raise SteerhealError(
                f"{what}[{i}] is {len(ids)} tokens, longer than the model's context of {max_len}; "
                f"shorten it (it starts {prompt[:60]!r})"
            )
        out.append(Encoded(tuple(ids), prompt_len, content_marks(ids, special)))
    return out


def encode_prompts(tok: PreTrainedTokenizerBase, prompts: Sequence[str], what: str = "prompts") -> list[list[int]]:
    """Each prompt's ids, tokenised as `encode` does (the model's context is checked where they are used)."""
    return [list(e.ids) for e in encode(tok, prompts, 10**9, what=what)]


def encode_ids(tok: PreTrainedTokenizerBase, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> Encoded:
    """An `Encoded` from ids already tokenised (a sampled completion is never re-tokenised)."""
    special = set(tok.all_special_ids)
    ids = (*prompt_ids, *completion_ids)
    return Encoded(tuple(int(i) for i in ids), len(prompt_ids), content_marks(ids, special))


def left_pad(items: Sequence[Encoded], pad_id: int) -> Batch:
    """Left padding, with position ids counted from each row's first real token.

    transformers derives position ids from the cache position in a plain forward call, which shifts
    every left-padded row; passing them explicitly makes a text's activations independent of its batch.
    """
    width = max(len(e.ids) for e in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    content = torch.zeros((len(items), width), dtype=torch.bool)
    prompt_end = torch.empty(len(items), dtype=torch.long)
    for row, e in enumerate(items):
        start = width - len(e.ids)
        input_ids[row, start:] = torch.tensor(e.ids)
        attention[row, start:] = 1
        content[row, start:] = torch.tensor(e.content)
        prompt_end[row] = start + e.prompt_len - 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attention, positions, content, prompt_end)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), longest first (fail early on memory)."""
    if batch_size < 1:
        raise SteerhealError(f"batch_size={batch_size} must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
