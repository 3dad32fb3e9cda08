"""The loop: rounds of re-extract → calibrate → pairs → heal → fold → verify → checkpoint, resumable.

Each round re-reads the teacher vector on the current student (every folded round on, no steering) and
re-calibrates its dose, because a fixed dose over-steers later rounds (as the public steer-heal-love loop
found). Random state for round k derives from (seed, k) alone, so a resumed round replays exactly what an
uninterrupted run would have done. Stop rules, in order: the coherence floor (absolute, before any ratio: a
coherent student that moved nothing must not look like success), a minimum gain in retain per round, the
maximum number of rounds. A round is complete when its manifest is written; `--resume` continues after the
last complete one.

Under a multi-process launch (docs/scale.md) every rank runs the loop: sampling, calibration's scoring and the
KL tail are shared out by batch and gathered; everything else (extraction, the heal, the other verification
metrics) runs identically on every rank, and rank 0's vector, pairs, adapter and stop decision are broadcast so
that no rank can drift from it by a rounding. Rank 0 alone writes the run directory and holds its lock.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal import dist
from steerheal.adapter.gated import GatedLoRA
from steerheal.boundary import checked
from steerheal.dose.calibrate import calibrate_dose
from steerheal.dose.filters import FilterConfig
from steerheal.dose.pairs import PreferencePair, write_pairs
from steerheal.dose.walk import dose_walk, walk_and_pair
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_bytes, atomic_write_json, defined, read_json
from steerheal.log import logger, stage
from steerheal.loop.checks import validate
from steerheal.loop.concepts import Concept, build_concept, round_teacher
from steerheal.loop.frontier_run import has_frontier, run_frontier
from steerheal.loop.lock import RunLock, writes_run
from steerheal.loop.model_spec import open_model
from steerheal.loop.runconfig import RunConfig, compared
from steerheal.loop.rundir import CONFIG, RunDir, prepare
from steerheal.loop.stoprules import stop_rule, summary
from steerheal.loop.verify import Reference, build_reference, verify_round
from steerheal.read.vector import Vector
from steerheal.seeds import derived_seed
from steerheal.training.heal import heal
from steerheal.training.losses import lam_schedule


def round_seed(seed: int, k: int) -> int:
    """Round k's random state: a function of (seed, k) only, so a replayed round draws the same numbers."""
    return derived_seed("round", seed, k, bits=32)


@dataclass
class RoundData:
    """What a round's heal is made from: the pairs, the dose they were made at, and the vector's rank drift."""

    pairs: list[PreferencePair]
    dose: dict[str, Any]
    vector_drift: float


@dataclass
class RunResult:
    root: Path
    rounds: list[int]
    stop_reason: str
    metrics: list[dict[str, Any]]


def _filters(config: RunConfig) -> FilterConfig:
    return config.filters.loosened() if config.loose_filters else config.filters


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
            self.reference = build_reference(
                self.model, self.adapter, self.tok, self.concept, teacher, self.reference_seed, self.config
            )
        return self.reference

    def verify(self) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """(metrics, samples) of the student as it is now, against the round-0 reference."""
        reference = self.reference if self.reference is not None else self._reference(self._teacher0())
        return verify_round(
            self.model, self.adapter, self.tok, self.concept, reference, self.reference_seed, self.config
        )

    def _teacher0(self) -> Vector:
        """Round 0's vector with the dose its pairs were made at: the fixed steered reference."""
        vector = Vector.load(self.run.round_dir(0), model=self.model)
        vector.coeff = vector.meta["pairs_dose"]["C"]
        return vector

    def round(self, k: int) -> tuple[dict[str, Any], list[dict[str, str]]]:
        times: dict[str, float] = {}
        return self.heal_and_verify(k, self.round_data(k, times), times)

    def round_data(self, k: int, times: dict[str, float]) -> RoundData:
        """Round k's first stages: extract, calibrate, pairs (saved with the vector) and the round-0 reference."""
        c, model, tok, concept = self.config, self.model, self.tok, self.concept
        seed = round_seed(c.seed, k)
        folder = self.run.round_dir(k)
        folder.mkdir(parents=True, exist_ok=True)
        self.run.log({"event": "round_start", "round": k, "seed": seed})
        with stage(f"round {k} extract", times):
            vector = round_teacher(concept, model, tok, c, k)
        vector_drift = dist.broadcast_tensors(list(vector.directions.values()))  # rank 0's vector on every rank
        with stage(f"round {k} calibrate", times):
            calibrate_dose(vector, model, tok, concept.calibration_prompts, c.dose, k, seed, c.sampling.batch_size)
        filters = _filters(c)
        prompts = concept.train_prompts(k)
        with stage(f"round {k} pairs", times):
            walk = dose_walk(model, tok, vector, prompts, c.dose, seed, c.sampling, filters)
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
        if self.run.writes:
            vector.save(folder)
            write_pairs(folder / "pairs.jsonl", pairs)
        self.run.log({"event": "pairs", "round": k, **dose, "calibration": vector.calibration})
        with stage(f"round {k} reference", times):
            if k == 0:
                teacher0 = copy.deepcopy(vector)
                teacher0.coeff = dose["C"]
                self._reference(teacher0)
            elif self.reference is None:
                self._reference(self._teacher0())
        return RoundData(pairs, dose, vector_drift)

    def heal_and_verify(
        self, k: int, data: RoundData, times: dict[str, float]
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Round k's last stages on `data`: heal the current round, fold it, verify, save (bench/sweep_smollm2.py
        repeats them on one round's data under several heal settings)."""
        c, model, adapter = self.config, self.model, self.adapter
        seed, folder = round_seed(c.seed, k), self.run.round_dir(k)
        pairs, dose, vector_drift = data.pairs, data.dose, data.vector_drift
        target = c.dose.target(k)
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
        with stage(f"round {k} heal", times):
            result = heal(model, adapter, pairs, heal_config, events=lambda e: self.run.log(e))
            if dist.world_size() > 1:
                # every rank healed the same pairs from the same state; rank 0's weights are taken by all, and how
                # far each rank's own heal (and its vector) was from rank 0's is logged
                trained = [p for p in model.parameters() if p.requires_grad]
                drift = dist.all_gather_object((vector_drift, dist.broadcast_tensors(trained)))
                self.run.log(
                    {
                        "event": "ranks_synced",
                        "round": k,
                        "vector_max_abs_diff": [v for v, _ in drift],
                        "adapter_max_abs_diff": [a for _, a in drift],
                    }
                )
            adapter.fold()
        with stage(f"round {k} verify", times):
            metrics, samples = self.verify()
        self.run.log({"event": "stage_times", "round": k, "seconds": {n.split()[-1]: s for n, s in times.items()}})
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
            "active_last_epoch": result.epoch_mean("active_fraction", heal_config.epochs - 1),
        }
        metrics = defined(metrics)
        if self.run.writes:
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
                # an error is not a stop rule: the complete rounds stand, no stop is recorded, and --resume
                # retries this round once the cause (a damaged file, a full disk, ...) is fixed
                self._record("round_failed", k, str(err))
                raise RoundFailed(self.run.root, k, err) from err
            except KeyboardInterrupt:
                self._record("interrupted", k, "interrupted (Ctrl-C)")
                raise
            why, broken = dist.broadcast_object(stop_rule(self.config, k, metrics, previous))  # rank 0 decides
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
            line = summary(k, metrics, metrics["dose"])
            logger.info(line)
            all_metrics.append(metrics)
            previous = metrics
            if why is not None:
                reason = why
                self.run.write_stop(why, k)
                break
        return RunResult(self.run.root, self.run.complete_rounds(), reason, all_metrics)

    def _record(self, event: str, k: int, error: str) -> None:
        """Log why round k did not complete, if the disk still takes it (the original error matters more)."""
        try:
            self.run.log({"event": event, "round": k, "error": error})
        except (SteerhealError, OSError) as err:
            logger.warning(f"could not record the {event} event: {err}")


class RoundFailed(SteerhealError):
    """A round could not be completed; the rounds before it stand and `--resume` retries it."""

    def __init__(self, root: Path, k: int, cause: SteerhealError) -> None:
        super().__init__(
            f"round {k} of run {root} failed: {cause}. The rounds before it are complete and kept; once the cause "
            "is fixed, continue the run with --resume (same options)"
        )
        self.root, self.round = root, k


def _attach(config: RunConfig, model: nn.Module) -> GatedLoRA:
    a = config.adapter
    return GatedLoRA.attach(
        model, a.r, a.alpha, list(a.target_modules) if a.target_modules else None, a.depth_band, seed=config.seed
    )


@checked
def run(config: RunConfig, overwrite: bool = False, resume: bool = False) -> RunResult:
    """Run (or with `resume`, continue) the loop described by `config` in runs_dir/name. Every option is
    checked first (nothing is loaded or written before), and the process that writes the run holds its lock."""
    if overwrite and resume:
        raise SteerhealError("--overwrite and --resume contradict each other; pass one of them")
    if config.concepts:
        raise SteerhealError(
            f"config.concepts={list(config.concepts)} describes a bank, one run per concept: use sh.run_bank(config) "
            "(`steerheal run --concepts ...` does), or leave concepts empty for the one concept of config.concept"
        )
    validate(config)
    dist.init()  # under torchrun / accelerate launch: join the ranks (gloo on CPU); nothing in one process
    torch.set_num_threads(config.torch_threads())
    root = config.runs_dir / config.name
    processes = dist.processes()
    if not writes_run():
        # rank 0 checks and opens the run folder; the others wait for its word (its error is theirs)
        error = dist.broadcast_object(None)
        if error is not None:
            raise SteerhealError(f"rank 0 could not open the run: {error}")
        run_dir = RunDir.follower(root)
        return _run(config, run_dir, *dist.broadcast_object(None))
    told = False
    created = False
    try:
        created = prepare(root, resume, overwrite)
        with RunLock(root):
            run_dir, state = _open(config, root, overwrite, resume, processes)
            told = True
            dist.broadcast_object(None)
            return _run(config, run_dir, *dist.broadcast_object(state))
    except BaseException as err:
        if not told and not isinstance(err, dist.RankLost):
            dist.broadcast_object(f"{type(err).__name__}: {err}")
        raise
    finally:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # nothing was written: leave no empty folder behind


def _open(
    config: RunConfig, root: Path, overwrite: bool, resume: bool, processes: dict[str, Any]
) -> tuple[RunDir, tuple[bool, list[int], dict[str, Any] | None]]:
    """The run directory (rank 0) and what every rank needs of it: (resume, complete rounds, stop record)."""
    settings = config.to_dict()
    run_dir = (
        RunDir.resume(root, settings, config.seed, compared, processes)
        if resume
        else RunDir.create(root, settings, config.seed, overwrite, processes)
    )
    done = run_dir.complete_rounds() if resume else []
    stopped = run_dir.stop_record()
    if stopped is None and done and run_dir.manifest(done[-1]).get("stop") is not None:
        # killed between the last manifest and stopped.json: the stop was decided, record it now
        run_dir.write_stop(run_dir.manifest(done[-1])["stop"], done[-1])
        stopped = run_dir.stop_record()
    return run_dir, (resume, done, stopped)


def _run(
    config: RunConfig, run_dir: RunDir, resume: bool, done: list[int], stopped: dict[str, Any] | None
) -> RunResult:
    root = run_dir.root
    if stopped is not None and (not config.verify.frontier or has_frontier(run_dir)):
        logger.info(f"run {root} already finished ({stopped['reason']}); nothing to resume")
        return RunResult(root, done, stopped["reason"], [])
    logger.info(
        f"run {root} ({'resumed' if resume else 'new'}): model {config.model}, seed {config.seed}, "
        f"{config.n_pairs} pairs per round, up to {config.stop.max_rounds} rounds; the whole config is in "
        f"{root / CONFIG}"
    )
    model, tok = open_model(config.model, config.quant, config.device, config.seed)
    with dist.rank_zero_first():  # rank 0 writes toyworld's corpus into the run, the others read it
        concept = build_concept(config, tok, run_dir.root, model)
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
    result = loop.rounds(len(done), previous) if stopped is None else RunResult(root, done, stopped["reason"], [])
    result.rounds = run_dir.complete_rounds()
    if config.verify.frontier and run_dir.stop_record() is not None and not has_frontier(run_dir):
        run_frontier(run_dir, config, model, tok, adapter, concept, result.rounds[-1])
    return result
