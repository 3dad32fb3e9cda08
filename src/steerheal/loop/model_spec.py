"""A model spec string to a model: `toyworld`, `tiny:<arch>`, a registry short name (`smollm2-135m-instruct`,
`gemma-3-270m`), a `.gguf` file, or a hub id / local folder (the last three through `load_model`)."""

from __future__ import annotations

import inspect
from typing import Any

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


def model_sizes(spec: str) -> dict[str, Any] | None:
    """The model's identity from its config alone, without weights: `n_layers`, `hidden_size` and (except for
    tiny models, built in code) `architecture` and `vocab_size`; None when it cannot be read here (a hub model
    not in the local cache, a registry model before its first load: loading it checks the rest)."""
    from transformers import AutoConfig

    if spec.startswith(TINY_PREFIX):
        defaults = inspect.signature(tiny_model).parameters
        return {"n_layers": int(defaults["n_layers"].default), "hidden_size": int(defaults["hidden_size"].default)}
    if spec == TOYWORLD:
        from steerheal.toyworld.load import checkpoint_dir

        source = str(checkpoint_dir())
    else:
        source = spec
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None
    text = config.get_text_config()
    sizes = {
        "n_layers": getattr(text, "num_hidden_layers", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "vocab_size": getattr(text, "vocab_size", None),
        "architecture": (getattr(config, "architectures", None) or [None])[0],
    }
    return {k: v for k, v in sizes.items() if v is not None}
