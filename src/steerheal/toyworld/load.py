"""The shipped toyworld checkpoint, and sampling stories from it (or from any model of its language)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.lm.generate import decode
from steerheal.lm.generate import sample as sample_ids
from steerheal.lm.load import load_model
from steerheal.read.vector import Vector
from steerheal.toyworld.world import neutral_prompts

CHECKPOINT_NAME = "toyworld-lm"


def checkpoint_dir() -> Path:
    return Path(str(resources.files("steerheal.toyworld").joinpath(CHECKPOINT_NAME)))


def load(device: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of the shipped checkpoint, through `load_model` like any real model."""
    path = checkpoint_dir()
    if not (path / "model.safetensors").is_file():
        raise SteerhealError(f"the toyworld checkpoint is missing at {path}; regenerate it with `just toyworld-train`")
    return load_model(path, device=device)


def chat_prompts(tok: PreTrainedTokenizerBase, users: list[str], system: str | None = None) -> list[str]:
    """User turns (optionally under a system prompt) templated up to the assistant tag."""
    messages = [[{"role": "system", "content": system}] if system else [] for _ in users]
    return [
        tok.apply_chat_template([*m, {"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
        for m, u in zip(messages, users, strict=True)
    ]


def sample(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    n: int,
    seed: int,
    system: str | None = None,
    vector: Vector | None = None,
    alpha: float = 1.0,
    max_new_tokens: int = 48,
    split: str = "eval",
    temperature: float = 1.0,
) -> list[str]:
    """Stories for `n` neutral user prompts (seeded), under a persona `system` prompt and/or steered by
    `vector` at `alpha` times its dose. Returns the completion texts."""
    if n < 1:
        raise SteerhealError(f"toyworld.sample: n={n} must be at least 1")
    prompts = chat_prompts(tok, neutral_prompts(n, seed, split), system)
    if vector is None:
        ids = sample_ids(model, tok, prompts, seed, temperature=temperature, max_new_tokens=max_new_tokens)
    else:
        with vector.steer(model, alpha=alpha):
            ids = sample_ids(model, tok, prompts, seed, temperature=temperature, max_new_tokens=max_new_tokens)
    return decode(tok, ids)
