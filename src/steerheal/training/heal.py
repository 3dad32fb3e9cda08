"""One distillation round: SFT on the steered completions + a preference term + a reverse-KL barrier.

    loss = sft_nll(chosen) + pref_weight · pref(chosen, rejected) + mean_b λ · relu(D_b − τ)

where D_b aggregates (default rmse, a tail statistic: a mean hides the spikes where steering broke the
text) the per-token KL(student ‖ ref) over sequence b's chosen completion, and the reference is the same
model under `adapter.reference("base" | "prev")` with no gradient: no second model in memory. The
barrier lets the trait move the distribution while holding the student near the reference where the
steered text departed from it most. Only `adapter.trainable_parameters()` train (the current round); every
loss is computed through the memory-bounded path (`bounded.py`). The model runs in eval mode throughout
(no dropout), so the reference is the student's own function with the round switched off.

A steering hook left on while training is an error: steering during fine-tuning blocks learning the trait
(the "preventative steering" result of Chen et al., *Persona Vectors*, 2025).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from steerheal.adapter.gated import GatedLoRA
from steerheal.boundary import check_methods, checked
from steerheal.dose.pairs import PreferencePair
from steerheal.errors import SteerhealError
from steerheal.lm.blocks import model_device, unwrap
from steerheal.lm.scoring import DIRECTIONS
from steerheal.lm.texts import Batch, Encoded, left_pad
from steerheal.log import logger, progress_disabled
from steerheal.read.steering import steering_active
from steerheal.training.bounded import (
    Positions,
    completion_positions,
    final_hidden,
    gather,
    head_parts,
    per_sequence,
    sequence_sums,
    token_scores,
)
from steerheal.training.losses import AGGREGATES, aggregate_kl, barrier, dpo_loss, orpo_loss

PREFS = ("none", "orpo", "dpo")
KL_REFS = ("base", "prev")
SCHEDULES = ("cosine", "constant")
Events = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class HealConfig:
    """One round's training. Defaults follow the public steer-heal-love recipe (LoRA in the 20-80% depth band,
    AdamW, NLL + λ·relu(D − τ) with D the reverse KL to a reference) scaled to small data."""

    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 2
    warmup_steps: int = 4
    schedule: str = "cosine"  # warmup then cosine to 0, or constant after warmup
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    pref: str = "orpo"  # none | orpo | dpo
    pref_weight: float = 1.0
    orpo_lam: float = 0.1
    dpo_beta: float = 0.1
    kl_ref: str = "base"  # base | prev: what the barrier (and DPO) anchors to
    kl_direction: str = "rev"
    kl_agg: str = "rmse"
    tau: float = 1.0
    lam: float = 0.3
    chunk: int = 512  # positions per LM-head chunk in the memory-bounded path
    grad_ratio_every: int = 10  # every k steps log |∇ barrier| / |∇ sft| (0: never)

    def __post_init__(self) -> None:
        checks = [
            (self.pref in PREFS, f"pref={self.pref!r}: use one of {list(PREFS)}"),
            (self.kl_ref in KL_REFS, f"kl_ref={self.kl_ref!r}: use one of {list(KL_REFS)}"),
            (self.schedule in SCHEDULES, f"schedule={self.schedule!r}: use one of {list(SCHEDULES)}"),
            (self.kl_direction in DIRECTIONS, f"kl_direction={self.kl_direction!r}: use one of {list(DIRECTIONS)}"),
            (self.kl_agg in AGGREGATES, f"kl_agg={self.kl_agg!r}: use one of {list(AGGREGATES)}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr={self.lr} must be a positive number"),
            (
                self.epochs >= 1 and self.batch_size >= 1 and self.grad_accum >= 1,
                "epochs, batch_size and grad_accum must be >= 1 "
                f"(got {self.epochs}, {self.batch_size}, {self.grad_accum})",
            ),
            (self.tau >= 0 and self.lam >= 0, f"tau={self.tau} and lam={self.lam} must be >= 0"),
            (self.pref_weight >= 0, f"pref_weight={self.pref_weight} must be >= 0"),
            (
                self.chunk >= 1 and self.warmup_steps >= 0 and self.grad_ratio_every >= 0,
                "chunk must be >= 1, warmup_steps and grad_ratio_every >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SteerhealError(f"HealConfig: {message}")


check_methods(HealConfig, init=True)


@dataclass
class HealResult:
    round: str
    n_pairs: int
    steps: int
    seconds: float  # training time, diagnostics (gradient-norm ratios) excluded
    events: list[dict[str, Any]] = field(default_factory=list)

    def epoch_mean(self, key: str, epoch: int) -> float:
        values = [e[key] for e in self.events if e["epoch"] == epoch and key in e]
        return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class _Example:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def _batch(prompts: Sequence[tuple[int, ...]], completions: Sequence[tuple[int, ...]]) -> tuple[Batch, Tensor]:
    """Left-padded prompt + completion ids and the completion mask aligned with them (pad id 0: masked)."""
    items = [Encoded(p + c, len(p), tuple(True for _ in p + c)) for p, c in zip(prompts, completions, strict=True)]
    batch = left_pad(items, pad_id=0)
    return batch, batch.completion_mask()


@dataclass
class _Side:
    batch: Batch
    positions: Positions


def _side(prompts: Sequence[tuple[int, ...]], completions: Sequence[tuple[int, ...]], device: torch.device) -> _Side:
    batch, mask = _batch(prompts, completions)
    return _Side(batch.to(device), completion_positions(batch.input_ids, mask))


class _Round:
    """The loss of one micro-batch, with the reference switched on and off inside the same model."""

    def __init__(self, model: nn.Module, adapter: GatedLoRA, config: HealConfig) -> None:
        self.model, self.adapter, self.config = model, adapter, config
        self.head = head_parts(model)
        self.device = model_device(model)

    def _hidden(self, side: _Side) -> Tensor:
        return gather(final_hidden(self.model, side.batch), side.positions)

    def _logp(self, hidden: Tensor, side: _Side) -> Tensor:
        """log p of each completion token (no KL), on the CPU where the sums and losses are formed."""
        targets = side.positions.targets.to(self.device)
        return token_scores(self.head, hidden, targets, chunk=self.config.chunk)[0].cpu()

    def parts(self, examples: Sequence[_Example]) -> dict[str, Tensor | float]:
        config = self.config
        prompts = [e.prompt for e in examples]
        chosen = _side(prompts, [e.chosen for e in examples], self.device)
        rejected = _side(prompts, [e.rejected for e in examples], self.device) if config.pref != "none" else None
        with torch.no_grad(), self.adapter.reference(config.kl_ref):
            ref_chosen = self._hidden(chosen)
            ref_sums = None
            if config.pref == "dpo":
                ref_rejected = self._hidden(rejected)  # type: ignore[arg-type]
                ref_sums = (
                    sequence_sums(self._logp(ref_chosen, chosen), chosen.positions),
                    sequence_sums(self._logp(ref_rejected, rejected), rejected.positions),  # type: ignore[arg-type]
                )
        lp_chosen, kl = token_scores(
            self.head,
            self._hidden(chosen),
            chosen.positions.targets.to(self.device),
            ref_chosen,
            config.kl_direction,
            config.chunk,
        )
        lp_chosen, kl = lp_chosen.cpu(), kl.cpu()  # type: ignore[union-attr]
        sft = -lp_chosen.mean()
        padded, mask = per_sequence(kl, chosen.positions)
        penalty, divergence, active = barrier(aggregate_kl(padded, mask, config.kl_agg), config.tau, config.lam)
        pref = torch.zeros(())
        if rejected is not None:
            lp_rejected, _ = token_scores(
                self.head, self._hidden(rejected), rejected.positions.targets.to(self.device), chunk=config.chunk
            )
            sums_c = sequence_sums(lp_chosen, chosen.positions)
            sums_r = sequence_sums(lp_rejected.cpu(), rejected.positions)
            if config.pref == "orpo":
                means = (sums_c / chosen.positions.counts, sums_r / rejected.positions.counts)
                pref = orpo_loss(*means, lam=config.orpo_lam).mean()
            else:
                pref = dpo_loss(sums_c, sums_r, *ref_sums, beta=config.dpo_beta).mean()  # type: ignore[misc]
        loss = sft + config.pref_weight * pref + penalty
        return {
            "loss": loss,
            "sft": sft,
            "pref": pref,
            "penalty": penalty,
            "D": divergence,
            "active": active,
            "tokens": float(chosen.positions.counts.sum()),
        }

    def grad_ratio(self, examples: Sequence[_Example]) -> float:
        """|∇ barrier| / |∇ sft| over the trainable parameters, on one micro-batch (a diagnostic)."""
        params = self.adapter.trainable_parameters()
        parts = self.parts(examples)
        norms = []
        for key in ("penalty", "sft"):
            value = parts[key]
            if not value.requires_grad:  # type: ignore[union-attr]
                norms.append(0.0)
                continue
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)  # type: ignore[arg-type]
            norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
        return norms[0] / norms[1] if norms[1] > 0 else math.inf


def _lr_factor(config: HealConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@checked
def heal(
    model: nn.Module,
    adapter: GatedLoRA,
    pairs: Sequence[PreferencePair],
    config: HealConfig | None = None,
    events: Events | None = None,
    progress: bool | None = None,
) -> HealResult:
    """Train the adapter's current round on the kept pairs; returns the per-step record."""
    config = config or HealConfig()
    if unwrap(model) is not adapter.model:
        raise SteerhealError("heal: the adapter is attached to another model than the one given")
    if steering_active(model):
        raise SteerhealError(
            "heal: a steering hook is active on the model. Steering while fine-tuning blocks learning the trait "
            "(preventative steering); exit the `with v.steer(...)` block before healing"
        )
    if adapter.current is None or not adapter.trainable_parameters():
        raise SteerhealError("heal: the adapter has no trainable current round; fold() or attach first")
    kept = [p for p in pairs if p.kept]
    if not kept:
        raise SteerhealError(f"heal: none of the {len(pairs)} pairs was kept by the filters; there is nothing to learn")
    examples = [_Example(tuple(p.prompt_ids), tuple(p.chosen_ids), tuple(p.rejected_ids)) for p in kept]
    if any(not e.chosen or (config.pref != "none" and not e.rejected) for e in examples):
        raise SteerhealError("heal: a kept pair has an empty completion; rebuild the pairs with make_pairs")

    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(examples) / per_step)
    total = steps_per_epoch * config.epochs
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, total))
    order = torch.Generator().manual_seed(config.seed)
    loss_of = _Round(model, adapter, config)
    result = HealResult(adapter.current.name, len(examples), total, 0.0)
    was_training = unwrap(model).training
    unwrap(model).eval()
    logger.debug(f"heal {adapter.current.name}: {len(examples)} pairs, {total} steps, config {asdict(config)}")
    bar = tqdm(total=total, desc=f"heal {adapter.current.name}", disable=progress_disabled(progress))
    step = 0
    try:
        for epoch in range(config.epochs):
            permutation = torch.randperm(len(examples), generator=order).tolist()
            for first in range(0, len(examples), per_step):
                chunk = [examples[i] for i in permutation[first : first + per_step]]
                micro = [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
                ratio = None
                if config.grad_ratio_every and step % config.grad_ratio_every == 0:
                    ratio = loss_of.grad_ratio(micro[0])  # before the timed path
                start = time.perf_counter()
                record: dict[str, float] = {
                    "loss": 0.0,
                    "sft": 0.0,
                    "pref": 0.0,
                    "penalty": 0.0,
                    "D_mean": 0.0,
                    "D_max": 0.0,
                    "active_fraction": 0.0,
                    "tokens": 0.0,
                }
                # SFT is a mean over the step's completion tokens, the other terms means over its sequences:
                # each micro-batch weighs in by its share of tokens and of sequences respectively.
                chunk_tokens = sum(len(e.chosen) for e in chunk)
                for part in micro:
                    by_sequence = len(part) / len(chunk)
                    by_token = sum(len(e.chosen) for e in part) / chunk_tokens
                    values = loss_of.parts(part)
                    objective = (
                        values["sft"] * by_token
                        + (
                            config.pref_weight * values["pref"] + values["penalty"]  # type: ignore[operator]
                        )
                        * by_sequence
                    )
                    objective.backward()  # type: ignore[union-attr]
                    record["sft"] += float(torch.as_tensor(values["sft"]).detach()) * by_token
                    for key in ("pref", "penalty"):
                        record[key] += float(torch.as_tensor(values[key]).detach()) * by_sequence
                    divergence = values["D"].detach()  # type: ignore[union-attr]
                    record["D_mean"] += float(divergence.mean()) * by_sequence
                    record["D_max"] = max(record["D_max"], float(divergence.max()))
                    record["active_fraction"] += float(values["active"]) * by_sequence
                    record["tokens"] += float(values["tokens"])
                record["loss"] = record["sft"] + config.pref_weight * record["pref"] + record["penalty"]
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.seconds += time.perf_counter() - start
                event = {
                    "event": "heal_step",
                    "round": adapter.current.name,
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    **record,
                }
                if ratio is not None:
                    event["grad_ratio_barrier_to_sft"] = ratio
                result.events.append(event)
                if events is not None:
                    events(event)
                bar.update(1)
                bar.set_postfix(sft=f"{record['sft']:.3f}", pen=f"{record['penalty']:.3f}", D=f"{record['D_mean']:.2f}")
                step += 1
    finally:
        bar.close()
        unwrap(model).train(was_training)
    logger.info(
        f"healed {result.round}: sft {result.epoch_mean('sft', 0):.3f} -> "
        f"{result.epoch_mean('sft', config.epochs - 1):.3f}, D {result.epoch_mean('D_mean', 0):.3f} -> "
        f"{result.epoch_mean('D_mean', config.epochs - 1):.3f} in {result.seconds:.1f} s"
    )
    return result
