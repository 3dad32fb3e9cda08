"""Fail fast on a hub id that cannot be fetched, instead of huggingface_hub's retries (46 s measured offline)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from steerheal.errors import SteerhealError

PROBE_TIMEOUT_S = 3.0


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_local_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the hub (proxies from the environment apply); any HTTP answer counts as reachable."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def check_hub_id(repo_id: str) -> None:
    """Raise, naming the fix, when `repo_id` is neither in the local hub cache nor fetchable right now."""
    from huggingface_hub import constants

    if in_local_cache(repo_id):
        return
    from steerheal.lm.registry import REGISTRY

    fix = (
        f"download it where the hub is reachable (`hf download {repo_id}`) and pass the folder, or load a model "
        f"that installs from the package registry: {', '.join(REGISTRY)} (docs/models.md)"
    )
    if _offline():
        raise SteerhealError(
            f"could not load model {repo_id!r}: it is not a local folder, not in the local hub cache, and "
            f"HF_HUB_OFFLINE is set; {fix}"
        )
    if not reachable(constants.ENDPOINT):
        raise SteerhealError(
            f"could not load model {repo_id!r}: it is not a local folder, not in the local hub cache, and "
            f"{constants.ENDPOINT} did not answer within {PROBE_TIMEOUT_S:.0f} s; {fix}"
        )
