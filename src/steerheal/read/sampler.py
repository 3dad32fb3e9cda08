"""The sampler seam: every completion the loop samples (plain and steered, seeded per prompt, ending at the
model's stop tokens) goes through one `Sampler`.

`TransformersSampler` is the implementation: `lm.generate.sample_shard` under the steering shifts
(`read.steering.add_to_residual`), each rank sampling its share of the batch plan and the completions
all-gathered, so every rank gets every prompt's completion, bit for bit what one process samples. Another
engine (vLLM with per-request steering vectors, docs/scale.md) replaces it with `use_sampler` without touching
pairs, calibration or verification: a request is the prompts, the seed and global index of each prompt's
generator, the sampling settings, and the steering as data ({block index: shift added to that block's output
at every position}). The model's adapter state (which gated rounds are on) is the model's own: a sampler that
does not share the model's weights must read it from the model it is given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Protocol, runtime_checkable

from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from steerheal import dist
from steerheal.boundary import check_methods, checked
from steerheal.lm.generate import sample_shard
from steerheal.lm.texts import Text
from steerheal.read.steering import add_to_residual


@runtime_checkable
class Sampler(Protocol):
    """Completion ids per prompt, in prompt order; prompt i drawn with the generator of (seed, first_index + i)."""

    def sample(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        prompts: Sequence[Text],
        seed: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 48,
        batch_size: int = 16,
        first_index: int = 0,
        steering: Mapping[int, Tensor] | None = None,
    ) -> list[list[int]]: ...


class TransformersSampler:
    """steerheal's own sampling (`lm.generate`), sharded over the ranks of a multi-process launch."""

    def sample(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        prompts: Sequence[Text],
        seed: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 48,
        batch_size: int = 16,
        first_index: int = 0,
        steering: Mapping[int, Tensor] | None = None,
    ) -> list[list[int]]:
        with add_to_residual(model, dict(steering)) if steering else nullcontext():
            local = sample_shard(
                model,
                tok,
                prompts,
                seed,
                temperature,
                top_p,
                max_new_tokens,
                batch_size,
                None,
                first_index,
                dist.rank(),
                dist.world_size(),
            )
        return dist.gather_indexed(local, len(prompts))


check_methods(TransformersSampler)

_CURRENT: list[Sampler] = [TransformersSampler()]


def sampler() -> Sampler:
    """The sampler in use (`TransformersSampler` unless `use_sampler` replaced it)."""
    return _CURRENT[-1]


@checked
@contextmanager
def use_sampler(replacement: Sampler) -> Iterator[Sampler]:
    """Within the block every steerheal stage samples through `replacement`."""
    _CURRENT.append(replacement)
    try:
        yield replacement
    finally:
        _CURRENT.remove(replacement)
