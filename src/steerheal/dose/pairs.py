"""Preference pairs: steered (chosen) against unsteered (rejected) completions of the same prompts.

Both completions of a prompt are sampled with the same per-prompt seed, so what differs is the steering.
Token ids are kept exactly as sampled and the prompt's ids as tokenised on their own: prompt and
completion are concatenated as ids, never re-tokenised from text (no boundary shift). Whether the
end-of-turn token belongs to the completion is explicit (`include_eos`, default yes: the student learns
to stop). A pair records every reason it was dropped; `pairs.jsonl` holds all of them, kept or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal import dist
from steerheal.boundary import check_methods, checked
from steerheal.dose.filters import FilterConfig, ends_a_sentence, text_reasons
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_bytes
from steerheal.lm.generate import stop_ids
from steerheal.lm.scoring import completion_token_logprobs
from steerheal.lm.texts import encode_prompts
from steerheal.log import logger
from steerheal.read.sampler import sampler
from steerheal.read.vector import Vector

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled (the same for the steered and the unsteered side)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 16


check_methods(SamplingConfig, init=True)


@dataclass
class PreferencePair:
    prompt: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen: str
    rejected: str
    dose: dict[str, float]  # alpha, coeff, C = alpha * coeff
    kept: bool
    reasons: list[str] = field(default_factory=list)
    chosen_tail_ppl: float | None = None
    notes: list[str] = field(default_factory=list)  # what was done to a completion that was kept (a cut)

    OPTIONAL = frozenset({"notes"})  # fields later than the first pairs.jsonl files

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> PreferencePair:
        missing = set(cls.__dataclass_fields__) - set(data) - cls.OPTIONAL
        if missing:
            raise SteerhealError(f"{where}: a pair lacks {sorted(missing)}; the file is damaged or foreign")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _finished(ids: Sequence[int], stops: frozenset[int]) -> bool:
    return len(ids) > 0 and ids[-1] in stops


def cut_at_sentence_end(tok: PreTrainedTokenizerBase, ids: Sequence[int], min_tokens: int) -> list[int] | None:
    """The longest prefix of `ids`, at least `min_tokens` long, whose text stops at a sentence end of the whole
    completion's text (None when there is none). Cut on ids, never on re-tokenised text."""
    full = tok.decode(ids, skip_special_tokens=True)
    low = max(min_tokens, 1)
    for k in range(len(ids), low - 1, -1):
        text = tok.decode(ids[:k], skip_special_tokens=True)
        if ends_a_sentence(text, full):
            while k > low and tok.decode(ids[: k - 1], skip_special_tokens=True).rstrip() == text.rstrip():
                k -= 1  # no trailing whitespace-only tokens
            return list(ids[:k])
    return None


def cut_unfinished(
    tok: PreTrainedTokenizerBase, completions: list[list[int]], finished: list[bool], min_tokens: int, side: str
) -> tuple[list[list[int]], list[bool], list[list[str]]]:
    """Every unfinished completion cut back to its last sentence end (then counted as finished, and trained
    without an end-of-turn token), with a note saying so; one without a sentence end is left as it was."""
    out, done, notes = [], [], []
    for ids, ended in zip(completions, finished, strict=True):
        cut = None if ended else cut_at_sentence_end(tok, ids, min_tokens)
        out.append(ids if cut is None else cut)
        done.append(ended or cut is not None)
        if cut is None:
            notes.append([])
            continue
        notes.append(
            [
                f"{side}: no end-of-turn within max_new_tokens; cut at its last sentence end ({len(ids)} -> "
                f"{len(cut)} tokens), trained without an end-of-turn token"
            ]
        )
    return out, done, notes


def tail_perplexity(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    tail_tokens: int,
    batch_size: int = 16,
) -> list[float]:
    """exp(mean NLL) of each completion's last `tail_tokens` tokens under `model` (inf when empty)."""
    logprobs = completion_token_logprobs(model, tok, prompt_ids, completion_ids, batch_size)
    return [math.exp(-float(lp[-tail_tokens:].mean())) if len(lp) else math.inf for lp in logprobs]


@dataclass(frozen=True)
class Check:
    text: str
    reasons: list[str]
    tail_ppl: float | None


def completion_checks(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    finished: Sequence[bool],
    filters: FilterConfig,
    include_eos: bool = True,
    batch_size: int = 16,
) -> list[Check]:
    """Every filter in force on each completion; the tail perplexity is scored by `model` as it is now
    (call it outside any steering context: "unsteered")."""
    stops = stop_ids(model, tok)
    ppl: list[float | None] = [None] * len(completions)
    if filters.max_tail_ppl is not None:
        nonempty = [i for i, c in enumerate(completions) if c]
        scores = tail_perplexity(
            model,
            tok,
            [prompt_ids[i] for i in nonempty],
            [completions[i] for i in nonempty],
            filters.tail_tokens,
            batch_size,
        )
        for i, value in zip(nonempty, scores, strict=True):
            ppl[i] = value
    out = []
    for i, ids in enumerate(completions):
        text = tok.decode(ids, skip_special_tokens=True)
        n_tokens = len(ids) - (1 if include_eos and _finished(ids, stops) else 0)
        reasons = text_reasons(text, n_tokens, finished[i], filters)
        if filters.max_tail_ppl is not None and ppl[i] is not None and ppl[i] > filters.max_tail_ppl:
            reasons.append(f"tail perplexity {ppl[i]:.1f} > {filters.max_tail_ppl}")
        out.append(Check(text, reasons, ppl[i]))
    return out


@checked
def make_pairs(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    vector: Vector,
    prompts: Sequence[str],
    alpha: float = 1.0,
    seed: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    filters: FilterConfig | None = None,
    include_eos: bool = True,
    first_index: int = 0,
    rejected_ids: Sequence[Sequence[int]] | None = None,
) -> list[PreferencePair]:
    """One pair per prompt: chosen sampled under `vector.steer(alpha)`, rejected without steering.
    `filters=None` applies the defaults of `FilterConfig`; `first_index` continues the per-prompt seeds
    of an earlier call (see `generate.sample`). `rejected_ids` reuses unsteered completions already sampled
    for these prompts with this seed (they do not depend on the dose: the dose walk samples them once)."""
    filters = filters or FilterConfig()
    if vector.coeff is None:
        raise SteerhealError("make_pairs: the vector has no dose; calibrate it (v.calibrate) or set v.coeff")
    if len(prompts) == 0:
        raise SteerhealError("make_pairs: prompts is empty")
    stops = stop_ids(model, tok)
    logger.debug(f"pair filters in force: {filters.to_dict()}")
    prompt_ids = encode_prompts(tok, prompts)
    kwargs = dict(
        seed=seed,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        batch_size=sampling.batch_size,
        first_index=first_index,
    )
    chosen = sampler().sample(model, tok, prompts, **kwargs, steering=vector.shifts(alpha))
    rejected = (
        [list(r) for r in rejected_ids] if rejected_ids is not None else sampler().sample(model, tok, prompts, **kwargs)
    )
    if len(rejected) != len(prompts):
        raise SteerhealError(f"make_pairs: {len(rejected)} rejected completions for {len(prompts)} prompts")
    finished = [_finished(c, stops) for c in chosen]
    rejected_finished = [_finished(r, stops) for r in rejected]
    notes: list[list[str]] = [[] for _ in prompts]
    if filters.cut_unfinished:
        chosen, finished, chosen_notes = cut_unfinished(tok, chosen, finished, filters.min_tokens, "chosen")
        rejected, rejected_finished, rejected_notes = cut_unfinished(
            tok, rejected, rejected_finished, filters.min_tokens, "rejected"
        )
        notes = [c + r for c, r in zip(chosen_notes, rejected_notes, strict=True)]
    if not include_eos:
        chosen = [c[:-1] if _finished(c, stops) else c for c in chosen]
        rejected = [r[:-1] if _finished(r, stops) else r for r in rejected]
    checks = completion_checks(model, tok, prompt_ids, chosen, finished, filters, include_eos, sampling.batch_size)
    dose = {"alpha": alpha, "coeff": vector.coeff, "C": alpha * vector.coeff}
    pairs = []
    for i, prompt in enumerate(prompts):
        rejected_text = tok.decode(rejected[i], skip_special_tokens=True)
        reasons = [f"chosen: {r}" for r in checks[i].reasons]
        if not rejected[i] or (filters.require_text and not rejected_text.strip()):
            reasons.append("rejected: empty")
        if filters.drop_unfinished and not rejected_finished[i]:
            reasons.append("rejected: unfinished: no end-of-turn within max_new_tokens")
        if filters.drop_identical and chosen[i] == rejected[i]:
            reasons.append("identical: steering changed nothing")
        pairs.append(
            PreferencePair(
                prompt,
                prompt_ids[i],
                chosen[i],
                rejected[i],
                checks[i].text,
                rejected_text,
                dose,
                not reasons,
                reasons,
                checks[i].tail_ppl,
                notes[i],
            )
        )
    # every rank holds every completion (the sampler gathers them) and checks them alike; rank 0's pairs are
    # taken as the pairs of all, so no rank can decide differently on a filter (the walk, the heal data)
    pairs = dist.broadcast_object(pairs)
    kept = sum(p.kept for p in pairs)
    logger.info(f"pairs at alpha {alpha:.3g} (C = {dose['C']:.4g}): kept {kept} of {len(pairs)}")
    return pairs


@checked
def write_pairs(path: str | Path, pairs: Sequence[PreferencePair]) -> Path:
    """pairs.jsonl: one JSON object per line, kept and dropped alike, written atomically."""
    path = Path(path)
    lines = [json.dumps({"format_version": FORMAT_VERSION, **p.to_json()}, sort_keys=True) for p in pairs]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode() if lines else b"")
    return path


@checked
def read_pairs(path: str | Path) -> list[PreferencePair]:
    path = Path(path)
    if not path.is_file():
        raise SteerhealError(f"pairs file {path} does not exist")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise SteerhealError(f"{path}:{n} is not valid JSON ({err}); the file is damaged") from err
        if data.pop("format_version", None) != FORMAT_VERSION:
            raise SteerhealError(f"{path}:{n}: unknown format_version; expected {FORMAT_VERSION}")
        pairs.append(PreferencePair.from_json(data, f"{path}:{n}"))
    return pairs
