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
