"""Seeds derived from their parts alone, so that a replayed round or a re-batched prompt draws the same numbers."""

from __future__ import annotations

import hashlib


def derived_seed(domain: str, *parts: int, bits: int = 63) -> int:
    """The low `bits` bits of SHA-256("steerheal.<domain>:<part>:..."), read little-endian (at most 64)."""
    key = ":".join([f"steerheal.{domain}", *(str(part) for part in parts)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << bits) - 1)
