"""A saved run, opened again: its model with the adapter after a round (`load_run`), that round's verification
recomputed (`verify_saved`), and the frontier of the student after it (`frontier_saved`, `steerheal frontier`
and `steerheal dial`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.adapter.gated import GatedLoRA
from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.files import defined, read_json
from steerheal.loop.concepts import build_concept
from steerheal.loop.frontier_run import run_frontier
from steerheal.loop.lock import RunLock
from steerheal.loop.model_spec import open_model
from steerheal.loop.rounds import Loop
from steerheal.loop.runconfig import RunConfig
from steerheal.loop.rundir import CONFIG, RunDir, open_existing


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


@checked
def load_run(directory: str | Path, round: int = -1) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, GatedLoRA]:
    """The base model with the gated adapter as it was after round `round` (-1: the last complete one)."""
    _, _, model, tok, adapter = _open_saved(directory, round)
    return model, tok, adapter


@checked
def verify_saved(directory: str | Path, round: int = -1) -> dict[str, Any]:
    """Re-run the verification of a saved round (deterministic: it reproduces the round's metrics.json)."""
    run_dir, config, model, tok, adapter = _open_saved(directory, round)
    concept = build_concept(config, tok, run_dir.root)
    metrics, _ = Loop(config, run_dir, model, tok, adapter, concept).verify()
    return defined(metrics)


@checked
def frontier_saved(
    directory: str | Path,
    round: int = -1,
    alphas: tuple[float, ...] | None = None,
    dials: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """The frontier of the student after a saved round (steering at alphas · c*, the student at dials), logged as
    a `frontier` event of the run so its report shows it; `alphas=()` is a plain dial sweep."""
    run_dir, config, model, tok, adapter = _open_saved(directory, round)
    concept = build_concept(config, tok, run_dir.root)
    k = run_dir.complete_rounds()[round]
    with RunLock(run_dir.root):
        return run_frontier(run_dir, config, model, tok, adapter, concept, k, alphas, dials)
