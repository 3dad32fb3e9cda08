"""The loop: rounds of re-extract → calibrate → pairs → heal → fold → verify → checkpoint, resumable.

Each round re-reads the teacher vector on the current student (every folded round on, no steering) and
re-calibrates its dose, because a fixed dose over-steers later rounds (as the public steer-heal-love loop
found). Random state for round k derives from (seed, k) alone, so a resumed round replays exactly what an
uninterrupted run would have done. Stop rules, in order: the coherence floor (absolute, before any ratio: a
coherent student that moved nothing must not look like success), a minimum gain in retain per round, the
maximum number of rounds. A round is complete when its manifest is written; `--resume` continues after the
last complete one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.adapter.gated import GatedLoRA
from steerheal.dose.filters import FilterConfig
from steerheal.dose.pairs import write_pairs
from steerheal.dose.walk import dose_walk, walk_and_pair
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_bytes, atomic_write_json, read_json
from steerheal.log import logger
from steerheal.loop.concepts import Concept, build_concept
from steerheal.loop.model_spec import check_spec, open_model
from steerheal.loop.runconfig import RunConfig
from steerheal.loop.rundir import CONFIG, RunDir, open_existing
from steerheal.loop.verify import Reference, build_reference, verify_round
from steerheal.read.vector import Vector
from steerheal.seeds import derived_seed
from steerheal.training.heal import heal
from steerheal.training.losses import lam_schedule


def round_seed(seed: int, k: int) -> int:
    """Round k's random state: a function of (seed, k) only, so a replayed round draws the same numbers."""
    return derived_seed("round", seed, k, bits=32)


@dataclass
class RunResult:
    root: Path
    rounds: list[int]
    stop_reason: str
    metrics: list[dict[str, Any]]


def defined(value: Any) -> Any:
    """Metrics with every non-finite number (a score of no text, an infinite perplexity) as None: undefined,
    not a number, and valid JSON."""
    if isinstance(value, dict):
        return {k: defined(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [defined(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _filters(config: RunConfig) -> FilterConfig:
    return config.filters.loosened() if config.loose_filters else config.filters


def _stop(
    config: RunConfig, k: int, metrics: dict[str, Any], previous: dict[str, Any] | None
) -> tuple[str | None, bool]:
    """(reason to stop or None, whether the round broke the coherence floor)."""
    stop, coherence = config.stop, metrics["coherence"]
    grammar = metrics.get("truth", {}).get("student", {}).get("grammar_ok")
    broken = []
    if grammar is not None and grammar < stop.min_grammar_ok:
        broken.append(f"grammar_ok {grammar:.3f} < {stop.min_grammar_ok}")
    if coherence["distinct_2"] is not None and coherence["distinct_2"] < stop.min_distinct_2:
        broken.append(f"distinct_2 {coherence['distinct_2']:.3f} < {stop.min_distinct_2}")
    if coherence["kl_tail_p95"] is not None and coherence["kl_tail_p95"] > stop.max_kl_tail:
        broken.append(f"KL(student‖base) p95 {coherence['kl_tail_p95']:.3f} > {stop.max_kl_tail}")
    if broken:
        return "coherence floor: " + "; ".join(broken), True
    if previous is not None and metrics["retain"] is not None and previous["retain"] is not None:
        gain = metrics["retain"] - previous["retain"]
        if gain < stop.min_trait_gain:
            return f"trait gain: retain rose {gain:+.3f} < {stop.min_trait_gain} this round", False
    if k + 1 >= stop.max_rounds:
        return f"max_rounds: {stop.max_rounds} rounds done", False
    return None, False


def _f(value: float | None, digits: int = 3) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"


def _summary(k: int, metrics: dict[str, Any], dose: dict[str, Any]) -> str:
    trait, coherence, direction = metrics["trait"], metrics["coherence"], metrics["direction"]
    parts = [
        f"round {k}: c*={dose['c']:.3g} alpha={dose['alpha']:.2g} kept {dose['kept']}/{dose['pairs']}",
        f"trait base {_f(trait['base'])} steered {_f(trait['steered'])} student {_f(trait['student'])}",
        f"retain {_f(metrics['retain'], 2)}",
    ]
    if "truth" in metrics:
        truth = metrics["truth"]
        parts.append(
            f"mood {_f(truth['base']['mood_rate'], 2)}/{_f(truth['steered']['mood_rate'], 2)}/"
            f"{_f(truth['student']['mood_rate'], 2)} grammar {_f(truth['student']['grammar_ok'])}"
        )
    parts.append(f"KL p95 {_f(coherence['kl_tail_p95'])}")
    parts.append(f"cos(v,v0) {_f(direction['cos_to_round0_mean'])} (ceiling {_f(direction['noise_ceiling_mean'])})")
    return " | ".join(parts)


class Loop:
    """One run: the model, its adapter, the concept and the run directory, advanced round by round."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        adapter: GatedLoRA,
        concept: Concept,
    ) -> None:
        self.config, self.run, self.model, self.tok = config, run, model, tok
        self.adapter, self.concept = adapter, concept
        self.reference: Reference | None = None

    @property
    def reference_seed(self) -> int:
        """The seed of the held-out generations every round is judged on (the same in every round)."""
        return round_seed(self.config.seed, -1)

    def _reference(self, teacher: Vector) -> Reference:
        if self.reference is None:
            c = self.config
            self.reference = build_reference(
                self.model,
                self.adapter,
                self.tok,
                self.concept,
                teacher,
                self.reference_seed,
                c.verify.max_new_tokens,
                c.sampling.batch_size,
            )
        return self.reference

    def verify(self) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """(metrics, samples) of the student as it is now, against the round-0 reference."""
        c = self.config
        reference = self.reference if self.reference is not None else self._reference(self._teacher0())
        return verify_round(
            self.model,
            self.adapter,
            self.tok,
            self.concept,
            reference,
            self.reference_seed,
            c.verify.max_new_tokens,
            c.sampling.batch_size,
            c.dose.n_tokens,
            c.verify.retain_floor,
            c.verify.n_samples,
        )

    def _teacher0(self) -> Vector:
        """Round 0's vector with the dose its pairs were made at: the fixed steered reference."""
        vector = Vector.load(self.run.round_dir(0), model=self.model)
        vector.coeff = vector.meta["pairs_dose"]["C"]
        return vector

    def round(self, k: int) -> tuple[dict[str, Any], list[dict[str, str]]]:
        c, model, tok, adapter, concept = self.config, self.model, self.tok, self.adapter, self.concept
        seed = round_seed(c.seed, k)
        folder = self.run.round_dir(k)
        folder.mkdir(parents=True, exist_ok=True)
        self.run.log({"event": "round_start", "round": k, "seed": seed})
        teacher = concept.teacher
        vector = Vector.train(
            model, tok, teacher.pos, teacher.neg, c.concept.layers, c.concept.method, teacher.position
        )
        d = c.dose
        target = d.target_kl * d.round_decay**k
        vector.calibrate(
            model,
            tok,
            concept.calibration_prompts,
            target,
            d.stat,
            d.n_tokens,
            d.tol,
            liveness_samples=d.liveness_samples,
            seed=seed,
            batch_size=c.sampling.batch_size,
        )
        filters = _filters(c)
        prompts = concept.train_prompts(k)
        walk = dose_walk(
            model,
            tok,
            vector,
            prompts,
            d.alpha,
            d.alpha_min,
            d.walk_factor,
            d.keep_target,
            d.probe_size,
            seed,
            c.sampling,
            filters,
        )
        pairs = walk_and_pair(model, tok, vector, prompts, walk, seed, c.sampling, filters)
        kept = sum(p.kept for p in pairs)
        dose = {
            "c": vector.coeff,
            "alpha": walk.alpha,
            "C": walk.alpha * vector.coeff,
            "walk": walk.keep_rates,
            "kept": kept,
            "pairs": len(pairs),
        }
        vector.meta["pairs_dose"] = dose
        vector.save(folder)
        write_pairs(folder / "pairs.jsonl", pairs)
        self.run.log({"event": "pairs", "round": k, **dose, "calibration": vector.calibration})
        if k == 0:
            teacher0 = copy.deepcopy(vector)
            teacher0.coeff = dose["C"]
            self._reference(teacher0)
        elif self.reference is None:
            self._reference(self._teacher0())
        lam, tau = lam_schedule(c.heal.lam, k, c.lam_power), lam_schedule(c.heal.tau, k, c.tau_power)
        heal_config = dataclasses.replace(c.heal, lam=lam, tau=tau, seed=seed)
        self.run.log(
            {
                "event": "heal_start",
                "round": k,
                "lam": lam,
                "tau": tau,
                "kl_ref": heal_config.kl_ref,
                "target_kl": target,
            }
        )
        result = heal(model, adapter, pairs, heal_config, events=lambda e: self.run.log(e))
        adapter.fold()
        metrics, samples = self.verify()
        metrics["dose"] = dose
        metrics["heal"] = {
            "lam": lam,
            "tau": tau,
            "target_kl": target,
            "kl_ref": heal_config.kl_ref,
            "steps": result.steps,
            "seconds": result.seconds,
            "sft_first_epoch": result.epoch_mean("sft", 0),
            "sft_last_epoch": result.epoch_mean("sft", heal_config.epochs - 1),
            "D_last_epoch": result.epoch_mean("D_mean", heal_config.epochs - 1),
        }
        metrics = defined(metrics)
        adapter.save(folder / "adapter")
        atomic_write_json(folder / "metrics.json", metrics)
        lines = "".join(json.dumps({"round": k, **sample}) + "\n" for sample in samples)
        atomic_write_bytes(folder / "samples.jsonl", lines.encode())
        return metrics, samples

    def rounds(self, start: int, previous: dict[str, Any] | None) -> RunResult:
        all_metrics, reason = [], "not started"
        for k in range(start, self.config.stop.max_rounds):
            try:
                metrics, samples = self.round(k)
            except SteerhealError as err:
                if k == 0:
                    raise
                # a later round that cannot be made (no reachable dose, no usable pairs) ends the run; the
                # complete rounds before it stand, and a resume would only replay the same failure
                reason = f"round {k} could not be made: {err}"
                self.run.log({"event": "round_failed", "round": k, "error": str(err)})
                self.run.write_stop(reason, k - 1)
                logger.warning(reason)
                break
            why, broken = _stop(self.config, k, metrics, previous)
            self.run.log(
                {
                    "event": "round_end",
                    "round": k,
                    "metrics": metrics,
                    "samples": samples,
                    "stop": why,
                    "coherence_broken": broken,
                }
            )
            self.run.write_manifest(k, {"stop": why, "coherence_broken": broken})
            line = _summary(k, metrics, metrics["dose"])
            logger.info(line)
            all_metrics.append(metrics)
            previous = metrics
            if why is not None:
                reason = why
                self.run.write_stop(why, k)
                break
        return RunResult(self.run.root, self.run.complete_rounds(), reason, all_metrics)


def _attach(config: RunConfig, model: nn.Module) -> GatedLoRA:
    a = config.adapter
    return GatedLoRA.attach(
        model, a.r, a.alpha, list(a.target_modules) if a.target_modules else None, a.depth_band, seed=config.seed
    )


def run(config: RunConfig, overwrite: bool = False, resume: bool = False) -> RunResult:
    """Run (or with `resume`, continue) the loop described by `config` in runs_dir/name."""
    if overwrite and resume:
        raise SteerhealError("--overwrite and --resume contradict each other; pass one of them")
    check_spec(config.model)
    root = config.runs_dir / config.name
    settings = config.to_dict()
    run_dir = (
        RunDir.resume(root, settings, config.seed) if resume else RunDir.create(root, settings, config.seed, overwrite)
    )
    done = run_dir.complete_rounds() if resume else []
    stopped = run_dir.stop_record()
    if stopped is not None:
        logger.info(f"run {root} already finished ({stopped['reason']}); nothing to resume")
        return RunResult(root, done, stopped["reason"], [])
    logger.info(
        f"run {root} ({'resumed' if resume else 'new'}): model {config.model}, seed {config.seed}, "
        f"{config.n_pairs} pairs per round, up to {config.stop.max_rounds} rounds; the whole config is in "
        f"{root / CONFIG}"
    )
    model, tok = open_model(config.model, config.quant, config.device, config.seed)
    concept = build_concept(config, tok, run_dir.root)
    if config.loose_filters:
        logger.warning(f"filters loosened for this run: {_filters(config).to_dict()}")
    run_dir.log(
        {
            "event": "run_start",
            "resume": resume,
            "from_round": len(done),
            "concept": concept.name,
            "model": config.model,
        }
    )
    adapter = GatedLoRA.load(model, run_dir.round_dir(done[-1]) / "adapter") if done else _attach(config, model)
    previous = read_json(run_dir.round_dir(done[-1]) / "metrics.json", f"run {run_dir.root}") if done else None
    loop = Loop(config, run_dir, model, tok, adapter, concept)
    result = loop.rounds(len(done), previous)
    result.rounds = run_dir.complete_rounds()
    return result


def _open_saved(
    directory: str | Path, round: int
) -> tuple[RunDir, RunConfig, PreTrainedModel, PreTrainedTokenizerBase, GatedLoRA]:
    """A saved run's directory, its configuration, and the base model with the adapter after `round`."""
    root = Path(directory)
    run_dir = open_existing(root)
    done = run_dir.complete_rounds()
    if not done:
        raise SteerhealError(f"run {root} has no complete round yet")
    k = done[round] if -len(done) <= round < len(done) else None
    if k is None:
        raise SteerhealError(f"run {root} has rounds {done}; round={round} is not one of them")
    config = RunConfig.from_dict(read_json(root / CONFIG, f"run {root}"))
    model, tok = open_model(config.model, config.quant, config.device, config.seed)
    adapter = GatedLoRA.load(model, run_dir.round_dir(k) / "adapter")
    return run_dir, config, model, tok, adapter


def load_run(directory: str | Path, round: int = -1) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, GatedLoRA]:
    """The base model with the gated adapter as it was after round `round` (-1: the last complete one)."""
    _, _, model, tok, adapter = _open_saved(directory, round)
    return model, tok, adapter


def verify_saved(directory: str | Path, round: int = -1) -> dict[str, Any]:
    """Re-run the verification of a saved round (deterministic: it reproduces the round's metrics.json)."""
    run_dir, config, model, tok, adapter = _open_saved(directory, round)
    concept = build_concept(config, tok, run_dir.root)
    metrics, _ = Loop(config, run_dir, model, tok, adapter, concept).verify()
    return defined(metrics)
