"""A model spec string to a model: `toyworld`, `tiny:<arch>`, a registry short name (`smollm2-135m-instruct`,
`gemma-3-270m`), a `.gguf` file, or a hub id / local folder (the last three through `load_model`)."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.lm.load import load_model
from steerheal.lm.tiny import TINY_ARCHS, tiny_model

TOYWORLD = "toyworld"
TINY_PREFIX = "tiny:"


def check_spec(spec: str) -> None:
    """Refuse a malformed spec before anything loads."""
    if spec.startswith(TINY_PREFIX) and spec.removeprefix(TINY_PREFIX) not in TINY_ARCHS:
        raise SteerhealError(f"model {spec!r}: unknown tiny arch; choose one of {list(TINY_ARCHS)}")


def open_model(
    spec: str, quant: str | None = None, device: str | None = None, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    check_spec(spec)
    if spec == TOYWORLD:
        from steerheal import toyworld

        return toyworld.load(device=device)
    if spec.startswith(TINY_PREFIX):
        return tiny_model(spec.removeprefix(TINY_PREFIX), seed=seed)
    return load_model(spec, quant=quant, device=device)
