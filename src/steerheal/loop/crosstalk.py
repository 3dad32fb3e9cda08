"""Cross-talk of a bank: how far turning concept j's dial to 1 moves concept i, and two dials against each alone.

Every variant generates the same held-out prompts with the same seeds: the base (every dial 0), each concept alone
at dial 1 (the others at 0), each pair at dial 1 together, and each concept's round-0 teacher steering the base at
the dose its pairs were made at. Each generation set is measured for every concept: on toyworld by the exact rate
(a mood's share of mood-bearing words, a topic's share of nouns), elsewhere by the concept's round-0 teacher
projection read by the base (mean over each generation's tokens, the `trait` of verify.py).

- `table[i][j]` = value_i(dial j = 1) − value_i(base): row i the concept measured, column j the dial turned;
- `relative[i][j]` = table[i][j] / table[i][i] (None when the diagonal is 0);
- `keep[i]` = table[i][i] / (value_i(steered_i) − value_i(base)): the share of its steered shift the bank keeps;
- `composition[i][j]` = (value_i(i and j at 1) − value_i(base)) / table[i][i]: concept i with j also on, against i
  alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.adapter.bank import Bank, only
from steerheal.loop.verify import generate
from steerheal.read.vector import Vector


@dataclass
class Member:
    """What the cross-talk needs of one concept: its round-0 teacher (coeff = the dose its pairs used) and, where
    the truth is known, its exact rate in texts (else the teacher's projection is its value)."""

    teacher: Vector
    rate: Callable[[list[str]], float] | None = None


def _ratio(a: float, b: float) -> float | None:
    return a / b if b != 0 else None


def crosstalk(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    bank: Bank,
    members: dict[str, Member],
    prompts: Sequence[str],
    seed: int,
    max_new_tokens: int,
    batch_size: int,
) -> dict[str, Any]:
    """The K×K table, its relative form, each concept's kept share of steering and the pairwise composition."""
    names = bank.concepts

    def texts(dials: dict[str, float], steer: Vector | None = None) -> list[str]:
        with only(bank, dials):
            shifts = steer.shifts() if steer is not None else None
            return generate(model, tok, prompts, seed, max_new_tokens, batch_size, shifts).texts

    def value(name: str, generated: list[str]) -> float:
        member = members[name]
        if member.rate is not None:
            return float(member.rate(generated))
        nonempty = [t for t in generated if t.strip()]
        with only(bank, {}):  # read by the base
            return float(member.teacher.project(model, tok, nonempty, position="mean").mean()) if nonempty else 0.0

    def values(generated: list[str]) -> dict[str, float]:
        return {name: value(name, generated) for name in names}

    base = values(texts({}))
    alone = {j: values(texts({j: 1.0})) for j in names}
    steered = {i: value(i, texts({}, members[i].teacher)) for i in names}
    together = {(i, j): values(texts({i: 1.0, j: 1.0})) for a, i in enumerate(names) for j in names[a + 1 :]}
    table = [[alone[j][i] - base[i] for j in names] for i in names]
    diag = [table[k][k] for k in range(len(names))]
    composition: list[list[float | None]] = [[None] * len(names) for _ in names]
    for (i, j), vals in together.items():
        a, b = names.index(i), names.index(j)
        composition[a][b] = _ratio(vals[i] - base[i], diag[a])
        composition[b][a] = _ratio(vals[j] - base[j], diag[b])
    return {
        "concepts": names,
        "measure": {n: "exact rate" if members[n].rate is not None else "teacher projection" for n in names},
        "base": base,
        "steered": steered,
        "alone": alone,
        "together": {f"{i}+{j}": vals for (i, j), vals in together.items()},
        "table": table,
        "relative": [[_ratio(table[a][b], diag[a]) for b in range(len(names))] for a in range(len(names))],
        "keep": {n: _ratio(diag[k], steered[n] - base[n]) for k, n in enumerate(names)},
        "composition": composition,
        "n_prompts": len(prompts),
        "seed": seed,
    }


def targets(result: dict[str, Any], independent: Callable[[str, str], bool]) -> dict[str, Any]:
    """The issue's targets against the measured values: keep ≥ 0.7, |relative| ≤ 0.1 for independent pairs,
    composition ≥ 0.8; each with its measured value and whether it is met (None where undefined)."""
    names = result["concepts"]

    def met(v: float | None, ok: Callable[[float], bool]) -> bool | None:
        return None if v is None else bool(ok(v))

    keep = {n: {"value": v, "met": met(v, lambda x: x >= 0.7)} for n, v in result["keep"].items()}
    cross = {
        f"{i} by {j}": {
            "value": result["relative"][a][b],
            "met": met(result["relative"][a][b], lambda x: abs(x) <= 0.1),
        }
        for a, i in enumerate(names)
        for b, j in enumerate(names)
        if a != b and independent(i, j)
    }
    composed = {
        f"{i} with {j}": {
            "value": result["composition"][a][b],
            "met": met(result["composition"][a][b], lambda x: x >= 0.8),
        }
        for a, i in enumerate(names)
        for b, j in enumerate(names)
        if a != b
    }
    return {"keep >= 0.7": keep, "independent |relative| <= 0.1": cross, "composition >= 0.8": composed}
