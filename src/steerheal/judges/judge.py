"""What a judge is: a callable from (prompt, completion) pairs to named scores, nothing more.

steerheal's own verification reads the trait with the teacher's projection, an instrument the method
itself built. A judge is an instrument it did not build (a sentiment lexicon, another model's loss, a
sentence encoder), so a user can check the method's claims without trusting its internals. Anything with
`__call__(pairs) -> dict[str, float]` and a `name` is a judge: the frontier and the loop never look inside.

Scores are aggregates over all the pairs (a mean, or a ratio of totals where that is what is meant, as bits
per byte is), so one call per variant gives one point per variant. A score of no text is NaN, never 0 (0
would read as "neutral" or "perfect"); `defined` turns NaN into JSON null.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from steerheal.errors import SteerhealError

Pair = tuple[str, str]
EXTRA = "judges"  # the optional-dependency extra that installs what the judges need


@runtime_checkable
class Judge(Protocol):
    """A judge: `judge(pairs) -> {"score name": value}`, the same keys for every call."""

    name: str

    def __call__(self, pairs: Sequence[Pair]) -> dict[str, float]: ...


def check_pairs(pairs: Sequence[Pair], what: str = "pairs") -> list[Pair]:
    """The pairs as a list of (str, str); anything else is an error naming the item."""
    if isinstance(pairs, str | bytes):
        raise SteerhealError(f"{what} is one string; a judge takes a list of (prompt, completion) pairs")
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise SteerhealError(f"{what}[{i}] = {pair!r:.80} is not a (prompt, completion) pair of strings")
        out.append((pair[0], pair[1]))
    if not out:
        raise SteerhealError(f"{what} is empty; a judge needs at least one (prompt, completion) pair")
    return out


def judge_all(judges: Mapping[str, Judge], pairs: Sequence[Pair]) -> dict[str, dict[str, float]]:
    """{judge name: its scores} for every judge on the same pairs."""
    pairs = check_pairs(pairs)
    out = {}
    for name, judge in judges.items():
        if not callable(judge):
            raise SteerhealError(f"judge {name!r} is a {type(judge).__name__}, not a callable from pairs to scores")
        scores = judge(pairs)
        if not isinstance(scores, Mapping) or not all(isinstance(k, str) for k in scores):
            raise SteerhealError(f"judge {name!r} returned {type(scores).__name__}; a judge returns {{name: float}}")
        out[name] = {k: float(v) for k, v in scores.items()}
    return out


def mean(values: Sequence[float]) -> float:
    """The mean, NaN for no values (a score of nothing is undefined, not 0)."""
    return math.fsum(values) / len(values) if values else math.nan


def require(module: str, package: str) -> Any:
    """Import an optional dependency of the judges, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SteerhealError(
            f"this judge needs {package} (module {module!r}), which is not installed; "
            f"install the judges extra: pip install 'steerheal[{EXTRA}]'"
        ) from err
