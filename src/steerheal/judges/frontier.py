"""The trait–KL frontier: does the healed adapter carry more trait than steering at the same distance from the base?

One number at one dose (verify's retain) cannot answer that: steering at a higher dose carries more trait
and more damage, and so does the student at a higher dial. The frontier sweeps both: steering at α·c*
(α ∈ {0.25, 0.5, 1, 1.5, 2}) and the student at dial g ∈ {0.25, 0.5, 1, 1.5, 2}, all on the same held-out
prompts with the same sampling seeds, the same `max_new_tokens` and the same judges. Each variant becomes a
point: trait shift (a judge's score minus the base's, signed towards the concept) against

- KL(variant ‖ base) per token, p95, on the variant's own samples, and on the base's fixed greedy
  continuations as a second view (`variants.py`);
- the coherence judge's bits per byte (beside distinct-2 and repetition, never alone);
- the relevance judge's prompt–completion cosine, relative to the base's.

`dominance.compare_curves` then says, per axis, where the student's curve lies above steering's
(interpolating in log-KL), and says `no_overlap` instead when the two cost ranges do not meet. The result is
a JSON-ready dict meant to be stored as one event, so a report regenerates the frontier from it alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerheal.adapter.gated import GatedLoRA
from steerheal.dose.calibrate import STATS, statistic
from steerheal.errors import SteerhealError
from steerheal.files import defined
from steerheal.judges.dominance import compare_curves
from steerheal.judges.judge import Judge, judge_all
from steerheal.judges.variants import Variant, kl_to_base, variants
from steerheal.lm.generate import decode, sample
from steerheal.lm.texts import encode_prompts
from steerheal.log import logger
from steerheal.read.steering import steering_active
from steerheal.read.vector import Vector

FORMAT_VERSION = 1
KIND = "steerheal.frontier"


@dataclass(frozen=True)
class FrontierConfig:
    """What the frontier sweeps and how it samples; every variant uses the same settings.

    - `alphas`: steering doses as multiples of the teacher's calibrated c*; `dials`: student dials g. Either
      may be empty (`alphas=()` is a plain dial sweep, `steerheal dial`); a value 0 is the base again, at KL 0,
      which a log-KL comparison leaves out.
    - `max_new_tokens`, `temperature`, `top_p`: sampling of every variant (same seed per prompt), so VADER's
      length effects are equal across variants.
    - `kl_tokens`: length of the base's greedy continuations (the second KL view); `kl_stat`: the per-token
      statistic (`p95`; also `mean`, `rmse`, `max`).
    - `trait`: `"judge.score"` giving the trait axis (VADER's compound by default; `toyworld.mood_rate` on
      toyworld), `trait_sign` +1 when more of the score is more of the concept, -1 for a gloomy concept.
    - `coherence`, `relevance`: the `"judge.score"` of those axes, or None; each is compared only when its
      judge was passed.
    - `retain_floor`: steering's trait shift at α = 1 below which the retain ratio is undefined (None).
    - `tie`: trait differences within it count as ties in the dominance intervals.
    - `batch_size`, `chunk`: memory (`chunk` rows of `[chunk, vocab]` float32 per KL buffer);
      `n_samples`: completions per variant kept in the record for the report.
    """

    alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
    dials: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    kl_tokens: int = 32
    kl_stat: str = "p95"
    trait: str = "vader.compound"
    trait_sign: float = 1.0
    coherence: str | None = "coherence.bits_per_byte"
    relevance: str | None = "relevance.relevance"
    retain_floor: float = 1e-3
    tie: float = 0.0
    batch_size: int = 8
    chunk: int = 64
    n_samples: int = 3

    def __post_init__(self) -> None:
        for name in ("alphas", "dials"):
            values = getattr(self, name)
            if any(not math.isfinite(v) or v < 0 for v in values):
                raise SteerhealError(f"FrontierConfig.{name}={values!r}: give finite values >= 0 (1 = c* / trained)")
        if self.kl_stat not in STATS:
            raise SteerhealError(f"FrontierConfig.kl_stat={self.kl_stat!r}: use one of {list(STATS)}")
        if self.trait_sign not in (1.0, -1.0):
            raise SteerhealError(f"FrontierConfig.trait_sign={self.trait_sign}: +1 or -1")
        for name in ("trait", "coherence", "relevance"):
            key = getattr(self, name)
            if key is not None and (key.count(".") < 1 or not all(key.split(".", 1))):
                raise SteerhealError(f"FrontierConfig.{name}={key!r}: write it 'judge.score' (e.g. 'vader.compound')")
        if min(self.max_new_tokens, self.kl_tokens, self.batch_size, self.chunk) < 1 or self.n_samples < 0:
            raise SteerhealError(f"FrontierConfig: token counts, batch_size and chunk must be >= 1: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score(judged: Mapping[str, Mapping[str, float]], key: str | None) -> float:
    """judged["judge"]["score"] for key "judge.score"; NaN when that judge or score is absent."""
    if key is None:
        return math.nan
    judge, score = key.split(".", 1)
    return float(judged.get(judge, {}).get(score, math.nan))


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan


def frontier(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    adapter: GatedLoRA,
    teacher: Vector,
    prompts: Sequence[str],
    seed: int,
    config: FrontierConfig,
    judges: Mapping[str, Judge],
    judge_prompts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The frontier of steering (`teacher` at α · teacher.coeff, on the base) against the student (`adapter`
    dialled), judged by `judges` ({name: judge}) on `prompts` (as the model reads them: templated).

    `judge_prompts` are what the judges read as each completion's prompt (the user's text without the chat
    template; default: `prompts`). The adapter's gates and the model's steering are as they were on return.
    Returns a JSON-ready dict (non-finite numbers as None): `variants` (one record per variant), `comparisons`
    (`kl_own`, `kl_greedy`, and `coherence` / `relevance` when judged), `summary` (the issue's targets).
    """
    if steering_active(model):
        raise SteerhealError("frontier: a steering hook is already active on the model; close it first")
    judge_prompts = list(prompts if judge_prompts is None else judge_prompts)
    if len(judge_prompts) != len(prompts) or not prompts:
        raise SteerhealError(
            f"frontier: {len(prompts)} prompts and {len(judge_prompts)} judge_prompts; give one judge prompt per "
            "prompt, and at least one prompt"
        )
    trait_judge = config.trait.split(".", 1)[0]
    if trait_judge not in judges:
        raise SteerhealError(
            f"frontier: the trait axis {config.trait!r} needs a judge named {trait_judge!r}; got {sorted(judges)}"
        )
    prompt_ids = encode_prompts(tok, prompts)
    points = variants(model, adapter, teacher, config.alphas, config.dials)
    base = points[0]
    with base.enter():
        greedy = sample(
            model, tok, prompts, seed, temperature=0, max_new_tokens=config.kl_tokens, batch_size=config.batch_size
        )
    records = [
        _measure(model, tok, v, base, prompt_ids, greedy, prompts, judge_prompts, seed, config, judges) for v in points
    ]
    _relative(records, config)
    result = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "n_prompts": len(prompts),
        "c_star": float(teacher.coeff),  # type: ignore[arg-type] (variants() checked it)
        "config": config.to_dict(),
        "variants": records,
        "comparisons": _comparisons(records, config),
    }
    result["summary"] = _summary(records, result["comparisons"], config)
    return defined(result)


def _measure(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    variant: Variant,
    base: Variant,
    prompt_ids: list[list[int]],
    greedy: list[list[int]],
    prompts: Sequence[str],
    judge_prompts: list[str],
    seed: int,
    config: FrontierConfig,
    judges: Mapping[str, Judge],
) -> dict[str, Any]:
    with variant.enter():
        ids = sample(
            model,
            tok,
            prompts,
            seed,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
        )
    texts = decode(tok, ids)
    kl = {}
    for view, completions in (("kl_own", ids), ("kl_greedy", greedy)):
        if variant.kind == "base":  # KL(base ‖ base) = 0, exactly
            kl[view] = {config.kl_stat: 0.0, "mean": 0.0}
            continue
        values = kl_to_base(
            model, tok, variant.enter, base.enter, prompt_ids, completions, config.batch_size, config.chunk
        )
        kl[view] = {config.kl_stat: statistic(values, config.kl_stat), "mean": statistic(values, "mean")}
    judged = judge_all(judges, list(zip(judge_prompts, texts, strict=True)))
    logger.info(
        f"frontier {variant.name}: KL {config.kl_stat} {kl['kl_own'][config.kl_stat]:.3g} (own), "
        f"{kl['kl_greedy'][config.kl_stat]:.3g} (greedy); trait {_score(judged, config.trait):.3g}"
    )
    return {
        "variant": variant.name,
        "kind": variant.kind,
        "value": variant.value,
        **kl,
        "judges": judged,
        "trait": _score(judged, config.trait),
        "samples": [{"prompt": p, "completion": t} for p, t in zip(judge_prompts, texts, strict=False)][
            : config.n_samples
        ],
    }


def _relative(records: list[dict[str, Any]], config: FrontierConfig) -> None:
    """Trait shift from the base (signed towards the concept) and the judges' scores relative to the base's."""
    base = records[0]
    for r in records:
        r["trait_shift"] = config.trait_sign * (r["trait"] - base["trait"])
        r["relative"] = {
            f"{judge}.{score}": _ratio(value, base["judges"][judge][score])
            for judge, scores in r["judges"].items()
            for score, value in scores.items()
            if not score.startswith("n_")
        }


def _curve(records: list[dict[str, Any]], kind: str, x: Any) -> list[tuple[float, float]]:
    return [(float(x(r)), float(r["trait_shift"])) for r in records if r["kind"] == kind]


def _comparisons(records: list[dict[str, Any]], config: FrontierConfig) -> dict[str, Any]:
    stat = config.kl_stat
    axes: dict[str, tuple[Any, bool]] = {
        "kl_own": (lambda r: r["kl_own"][stat], True),
        "kl_greedy": (lambda r: r["kl_greedy"][stat], True),
    }
    judged = records[0]["judges"]
    for name, key in (("coherence", config.coherence), ("relevance", config.relevance)):
        if key is not None and math.isfinite(_score(judged, key)):
            axes[name] = ((lambda r, key=key: _score(r["judges"], key)), False)
    out = {}
    for name, (x, log_x) in axes.items():
        out[name] = compare_curves(_curve(records, "student", x), _curve(records, "steering", x), log_x, config.tie)
        labels = {"kl_own": f"KL {stat} (own samples)", "kl_greedy": f"KL {stat} (base greedy)"}
        out[name]["x"] = labels[name] if name in labels else getattr(config, name)
    return out


def _summary(records: list[dict[str, Any]], comparisons: dict[str, Any], config: FrontierConfig) -> dict[str, Any]:
    """The figures the issue's targets name: the student at dial 1 against steering at c* and the base."""
    by = {(r["kind"], r["value"]): r for r in records}
    student, steered = by.get(("student", 1.0)), by.get(("steering", 1.0))
    out: dict[str, Any] = {"trait": config.trait, "trait_base": records[0]["trait"]}
    if steered is not None:
        out["steering_shift_at_c_star"] = steered["trait_shift"]
    if student is not None:
        out["student_shift_at_dial_1"] = student["trait_shift"]
        for key in (config.coherence, config.relevance, "coherence.distinct_2"):
            if key is not None and key in student["relative"]:
                out[f"student_{key}_vs_base"] = student["relative"][key]
    if student is not None and steered is not None:
        shift = steered["trait_shift"]
        usable = math.isfinite(shift) and abs(shift) >= config.retain_floor
        out["retain_at_c_star"] = student["trait_shift"] / shift if usable else None
    out["matched_kl"] = {view: comparisons[view]["verdict"] for view in ("kl_own", "kl_greedy")}
    return out
