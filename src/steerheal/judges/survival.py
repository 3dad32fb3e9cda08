"""Did the concept direction survive the rounds? cos(v, v0) read against what re-reading alone costs.

A bare cos(v_round, v_0) = 0.8 says nothing: if two halves of the same contrast set, read on the same base,
agree only to 0.7, then 0.8 is as good as re-extraction ever gets; if they agree to 0.99, 0.8 is a real
wander. Verify already computes that split-half ceiling (`loop/verify.noise_ceiling`); this states the
survival relative to it. Half-size sets make the ceiling conservative (low), so a ratio at or above 1 is
"within re-reading noise", and only a ratio clearly below 1 is a direction that moved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from steerheal.errors import SteerhealError


def direction_survival(
    cos_to_round0: Mapping[int, float], noise_ceiling: Mapping[int, float], tolerance: float = 0.0
) -> dict[str, Any]:
    """Per layer and over the layers both cover: cos(v, v0), the ceiling, and their ratio.

    `relative` = mean cos / mean ceiling (None when the mean ceiling is not positive: halves that disagree
    that badly leave nothing to compare with); `within_noise` = relative >= 1 - tolerance; `reading` says it
    in words. JSON-ready (layer keys are strings).
    """
    layers = sorted(set(cos_to_round0) & set(noise_ceiling))
    if not layers:
        raise SteerhealError(
            f"direction_survival: no layer has both a cosine ({sorted(cos_to_round0)}) and a ceiling "
            f"({sorted(noise_ceiling)}); pass the two per-layer dicts verify computes for the same vector"
        )
    if tolerance < 0:
        raise SteerhealError(f"direction_survival: tolerance={tolerance} must be >= 0")
    cos = {k: float(cos_to_round0[k]) for k in layers}
    ceil = {k: float(noise_ceiling[k]) for k in layers}
    cos_mean = math.fsum(cos.values()) / len(layers)
    ceiling_mean = math.fsum(ceil.values()) / len(layers)
    relative = cos_mean / ceiling_mean if ceiling_mean > 0 else None
    per_layer = {
        str(k): {"cos": cos[k], "ceiling": ceil[k], "relative": cos[k] / ceil[k] if ceil[k] > 0 else None}
        for k in layers
    }
    within = relative is not None and relative >= 1 - tolerance
    if relative is None:
        reading = f"no ceiling: split halves agree to {ceiling_mean:.3f} on average, so cos {cos_mean:.3f} is unread"
    elif within:
        reading = f"cos {cos_mean:.3f} reaches the split-half ceiling {ceiling_mean:.3f}: within re-reading noise"
    else:
        reading = (
            f"cos {cos_mean:.3f} is {relative:.0%} of the split-half ceiling {ceiling_mean:.3f}: "
            "the direction moved more than re-reading alone moves it"
        )
    return {
        "cos_mean": cos_mean,
        "ceiling_mean": ceiling_mean,
        "relative": relative,
        "within_noise": within,
        "per_layer": per_layer,
        "reading": reading,
    }
