"""A bank run (`RunConfig.concepts`): each concept distilled into its own group of rounds, then their cross-talk.

    runs/<name>/  bank-run.json (the marker and the whole config)   crosstalk.json   report.md  report.html
                  crosstalk.png
                  concepts/<concept>/   an ordinary run of that one concept (rounds, resume, verify, report)

Each concept is an ordinary run whose `concept` names it (toyworld: `concept.mood`, a mood or a topic; corpus and
readout: `concept.name`), trained on the base: its rounds are distilled with every other concept's dial at 0, so
one concept's rounds never depend on another's, and a bank's concept is the same adapter as that concept's run
alone. Then the bank is assembled on one base (`Bank.load` of each concept's last round) and its cross-talk
measured (`crosstalk.py`): whether the concepts, distilled apart, stay apart when their dials turn together.
`--resume` resumes each unfinished concept and measures the cross-talk again if any concept trained a round or it is
missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerheal import dist
from steerheal.adapter.bank import Bank, check_concepts
from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, defined, provenance, read_json
from steerheal.log import logger
from steerheal.loop.checks import validate
from steerheal.loop.concepts import build_concept
from steerheal.loop.crosstalk import Member, crosstalk, targets
from steerheal.loop.model_spec import open_model
from steerheal.loop.report.crosstalk import write_bank_report
from steerheal.loop.rounds import RunResult, run
from steerheal.loop.runconfig import RunConfig
from steerheal.loop.rundir import open_existing
from steerheal.read.vector import Vector

BANK_MARKER = "bank-run.json"
CROSSTALK = "crosstalk.json"
SOURCES = ("toyworld", "corpus", "readout")


@dataclass
class BankResult:
    root: Path
    runs: dict[str, RunResult]
    crosstalk: dict[str, Any]


def member_config(config: RunConfig, name: str) -> RunConfig:
    """The run of one concept of the bank: `concept` naming it, in `<root>/concepts/<name>`."""
    c = config.concept
    concept = dataclasses.replace(c, mood=name) if c.source == "toyworld" else dataclasses.replace(c, name=name)
    root = config.runs_dir / config.name / "concepts"
    return dataclasses.replace(config, concepts=(), concept=concept, name=name, runs_dir=root)


def check_bank(config: RunConfig) -> list[RunConfig]:
    """Every concept's run checked before anything loads or is written; returns them."""
    names = check_concepts(config.concepts, "--concepts")
    if config.concept.source not in SOURCES:
        raise SteerhealError(
            f"--concepts with --concept.source {config.concept.source}: a bank names its concepts, which only the "
            f"sources {list(SOURCES)} do; use one of them"
        )
    if config.concept.source == "toyworld" and config.concept.off_target_mood in names:
        raise SteerhealError(
            f"--concepts {list(names)} holds the off-target mood {config.concept.off_target_mood!r}; pick another "
            "--concept.off-target-mood (a concept that no dial of the bank should move)"
        )
    members = [member_config(config, n) for n in names]
    for member in members:
        validate(member)
    return members


def independent(config: RunConfig, i: str, j: str) -> bool:
    """toyworld: a mood and a topic are independent by construction (drawn apart; no word is both); elsewhere
    nothing is known to be independent."""
    if config.concept.source != "toyworld":
        return False
    from steerheal.toyworld.world import MOODS, TOPICS

    return (i in MOODS and j in TOPICS) or (i in TOPICS and j in MOODS)


@checked
def run_bank(config: RunConfig, overwrite: bool = False, resume: bool = False) -> BankResult:
    """Each concept of `config.concepts` as its own run, then the bank's cross-talk and report."""
    members = check_bank(config)
    if dist.world_size() > 1:
        raise SteerhealError("a bank runs in one process; launch `steerheal run --concepts ...` without torchrun")
    root = config.runs_dir / config.name
    marker = root / BANK_MARKER
    if root.is_dir() and any(root.iterdir()) and not marker.is_file():
        raise SteerhealError(f"{root} exists and is not a steerheal bank run (no {BANK_MARKER}); pick another --name")
    if marker.is_file() and not (overwrite or resume):
        raise SteerhealError(f"bank run {root} exists; pass --overwrite to replace it or --resume to continue it")
    if resume and marker.is_file():
        stored = read_json(marker, f"bank run {root}").get("config", {})
        if RunConfig.from_dict(stored).concepts != config.concepts:
            raise SteerhealError(f"bank run {root} has concepts {stored.get('concepts')}; resume it with those")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"kind": "steerheal.bank_run", "config": config.to_dict(), **provenance()})
    runs = {}
    for member in members:
        folder = member.runs_dir / member.name
        runs[member.name] = run(member, overwrite=overwrite, resume=resume and folder.is_dir())
    from steerheal.loop.report import page

    for member in members:  # a concept's report, unless a resume found it finished and reported
        folder = member.runs_dir / member.name
        if runs[member.name].metrics or not (folder / "report.html").is_file():
            page.build(folder)
    fresh = any(r.metrics for r in runs.values())  # a concept trained a round now: its cross-talk is new too
    if resume and not fresh and (root / CROSSTALK).is_file() and (root / "report.html").is_file():
        result = read_json(root / CROSSTALK, f"bank run {root}")
    else:
        result = measure(config, members)
        atomic_write_json(root / CROSSTALK, {**defined(result), **provenance()})
        write_bank_report(root, result, {m.name: f"concepts/{m.name}/report.html" for m in members})
    logger.info(f"bank {root}: cross-talk written to {root / CROSSTALK} and {root / 'report.html'}")
    return BankResult(root, runs, result)


def measure(config: RunConfig, members: list[RunConfig]) -> dict[str, Any]:
    """Load every concept's last round into one Bank on a fresh base and measure the cross-talk."""
    model, tok = open_model(config.model, config.quant, config.device, config.seed)
    folders, parts = {}, {}
    for member in members:
        run_dir = open_existing(member.runs_dir / member.name)
        done = run_dir.complete_rounds()
        if not done:
            raise SteerhealError(f"bank concept {member.name}: its run has no complete round; --resume the bank")
        folders[member.name] = run_dir.round_dir(done[-1]) / "adapter"
        parts[member.name] = run_dir
    bank = Bank.load(model, folders)
    members_info, prompts = {}, None
    for member in members:
        concept = build_concept(
            dataclasses.replace(member, verify=dataclasses.replace(member.verify, readout=False)), tok
        )
        teacher = Vector.load(parts[member.name].round_dir(0), model=model)
        teacher.coeff = teacher.meta["pairs_dose"]["C"]
        judge = concept.judge
        rate = (lambda texts, judge=judge: judge(texts)["mood_rate"]) if judge is not None else None
        members_info[member.name] = Member(teacher, rate)
        prompts = prompts or concept.eval_prompts
    seed = config.seed
    result = crosstalk(
        model, tok, bank, members_info, prompts or [], seed, config.verify.max_new_tokens, config.sampling.batch_size
    )
    result["independent"] = [[independent(config, i, j) for j in result["concepts"]] for i in result["concepts"]]
    result["targets"] = targets(result, lambda i, j: independent(config, i, j))
    result["rounds"] = {m.name: parts[m.name].complete_rounds() for m in members}
    return result
