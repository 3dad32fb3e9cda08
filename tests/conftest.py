"""Shared test setup: one torch thread per process, small hypothesis runs, cached tiny models."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a hub: CI machines have no internet
settings.register_profile("steerheal", deadline=None, max_examples=12, derandomize=True)
settings.load_profile("steerheal")

import steerheal as sh  # noqa: E402

_TINY: dict[tuple[str, int], tuple] = {}


def tiny(arch: str, seed: int = 0):
    """A cached tiny model; tests must not change its weights (copy it if they do)."""
    if (arch, seed) not in _TINY:
        _TINY[(arch, seed)] = sh.tiny_model(arch, seed=seed)
    return _TINY[(arch, seed)]


def randomise(adapter, seed: int, scale: float) -> None:
    """Seeded random factors for an adapter's trainable parameters (a GatedLoRA, or one concept's view of a
    Bank), in place of training: fast, and every round then moves the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits of `ids`, without gradients."""
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Messages loguru emits during the test (WARNING and INFO alike: steerheal is verbose meanwhile)."""
    from loguru import logger

    messages: list[str] = []
    handle = logger.add(lambda m: messages.append(str(m)), level="INFO", format="{level} {message}")
    sh.verbose()
    try:
        yield messages
    finally:
        sh.verbose(False)
        logger.remove(handle)


# ---- real pretrained LMs from the package registry (tests/test_real_models.py, docs/models.md)


def require_registered(short_name: str) -> None:
    """Skip when the model's package is missing; under CI=true (which installs both) fail instead."""
    import importlib.util

    from steerheal.lm.registry import REGISTRY

    model = REGISTRY[short_name]
    if all(importlib.util.find_spec(module) is not None for module, _ in model.chunks):
        return
    message = f"{short_name}: its package is not installed; `{model.install}` (or python3 dev.py)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct, built COLD into a temporary cache: the session's one load is also the test of the
    cold path (GGUF -> folder), so it costs nothing extra on a fresh machine (~35 s; ~1 s warm loads after)."""
    import time
    from types import SimpleNamespace

    from steerheal.lm.gguf import locate
    from steerheal.lm.gguf_cache import materialise
    from steerheal.lm.registry import SMOLLM2

    require_registered(SMOLLM2.short_name)
    cache = tmp_path_factory.mktemp("steerheal_cache")
    start = time.perf_counter()
    gguf = locate(SMOLLM2, cache)
    folder = materialise(gguf, cache)
    cold_s = time.perf_counter() - start
    model, tok = sh.load_model(folder)
    return SimpleNamespace(model=model, tok=tok, folder=folder, cache=cache, gguf=gguf, cold_s=cold_s)


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M from the default cache ($STEERHEAL_CACHE or ~/.cache/steerheal): built once per machine."""
    from types import SimpleNamespace

    from steerheal.lm.gguf import cache_root, locate
    from steerheal.lm.gguf_cache import materialise
    from steerheal.lm.registry import GEMMA3_270M

    require_registered(GEMMA3_270M.short_name)
    gguf = locate(GEMMA3_270M)
    folder = materialise(gguf)
    model, tok = sh.load_model(folder)
    return SimpleNamespace(model=model, tok=tok, folder=folder, cache=cache_root(), gguf=gguf)
