"""The `steerheal` command: run | extract | calibrate | verify | report | export.

`run`, `extract` and `calibrate` take a RunConfig: a preset (`--preset toyworld | fast-dev-run | real`;
without one it follows `--model`: toyworld, tiny:<arch> or anything else) and any field overridden as
`--model`, `--seed`, `--heal.lam`, `--concept.mood`, ... (see `steerheal run --help`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

from steerheal.errors import SteerhealError
from steerheal.files import check_output_folder
from steerheal.lm.registry import REGISTRY
from steerheal.lm.tiny import TINY_ARCHS
from steerheal.log import is_verbose, logger, quiet_bitsandbytes, verbose
from steerheal.loop.model_spec import TINY_PREFIX, TOYWORLD
from steerheal.loop.runconfig import PRESETS, RunConfig, preset

USAGE = """usage: steerheal {run,extract,calibrate,verify,report,export,frontier,dial} [options]

  run        the loop: rounds of re-extract, calibrate, pairs, heal, fold, verify, checkpoint
             (--preset toyworld|fast-dev-run|real|smollm2, --overwrite, --resume, RunConfig overrides)
  extract    read the concept's teacher vector and save it (--out DIR, RunConfig overrides)
  calibrate  set a saved vector's iso-KL dose (--vector DIR, RunConfig overrides)
  verify     re-run a round's verification and print it (RUN [--round K])
  report     regenerate a run's report.md, report.html and trajectory.png from events.jsonl (RUN)
  export     write a round as a plain peft adapter or a merged model (RUN [--round K] --peft DIR | --merged DIR)
  frontier   steering at alpha x c* against the student at dial g, judged; logged into the run (RUN [--round K])
  dial       the student at dial g (0 = base, 1 = as trained), judged (RUN [--round K] --g 0 0.5 1 1.5 2)

Each command takes --help."""

RUN_FLAGS = """steerheal run: flags handled before the RunConfig options below
  --preset NAME   toyworld (default for --model toyworld), fast-dev-run (default for tiny:<arch>; without a
                  --model it runs every tiny architecture), smollm2 (default for smollm2-135m-instruct and
                  gemma-3-270m), real (default for any other model)
  --overwrite     replace an existing run (only a folder steerheal made; after every option is checked)
  --resume        continue the run in runs_dir/name from its last complete round
  --threads N     torch CPU threads (default: 1 for toyworld and tiny:<arch>; see docs/loop.md); not compared
                  on --resume
"""

ACTIVE: dict[str, Any] = {}
"""The run `steerheal run` is writing now and its arguments: where Ctrl-C stopped, and how to resume."""


def resume_command(args: list[str]) -> str:
    """The exact command that continues the run these `steerheal run` arguments started."""
    kept = [a for a in args if a != "--overwrite"]
    return shlex.join(["steerheal", "run", *kept, *([] if "--resume" in kept else ["--resume"])])


def _where(root: Path) -> str:
    """Where a run stands, in words (for the Ctrl-C line)."""
    from steerheal.loop.rundir import open_existing

    try:
        done = open_existing(root).complete_rounds()
    except SteerhealError:
        return f"before {root} held a run"
    return f"in round {len(done)} of {root} (complete rounds: {done})"


def _pop_flag(args: list[str], flag: str) -> bool:
    if flag in args:
        args.remove(flag)
        return True
    return False


def _option(args: list[str], flag: str) -> str | None:
    """The value of `flag` in args (left in place)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _take(args: list[str], flag: str) -> str | None:
    """The value of `flag`, removed from args."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if arg.startswith(flag + "="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def run_config(args: list[str], prog: str, description: str) -> tuple[RunConfig, str]:
    """(RunConfig, preset name) from a preset flag or the model, then tyro overrides."""
    name = _take(args, "--preset")
    model = _option(args, "--model")
    if name is None and model in REGISTRY:  # a registry model brings its own preset (lm/registry.py)
        name = REGISTRY[model].preset
    if name is None:
        name = "toyworld" if model in (None, TOYWORLD) else "fast-dev-run" if model.startswith(TINY_PREFIX) else "real"
    if name not in PRESETS:
        raise SteerhealError(f"--preset {name!r}: choose one of {list(PRESETS)}")
    config = tyro.cli(RunConfig, default=preset(name), args=args, prog=prog, description=description)
    return config, name


def command_run(args: list[str]) -> None:
    from steerheal.loop import report
    from steerheal.loop.lock import writes_run
    from steerheal.loop.rounds import run

    if "-h" in args or "--help" in args:
        print(RUN_FLAGS)
    original = list(args)
    overwrite, resume = _pop_flag(args, "--overwrite"), _pop_flag(args, "--resume")
    all_archs = _option(args, "--model") is None
    config, name = run_config(args, "steerheal run", "The loop (presets: see above).")
    configs = [config]
    if name == "fast-dev-run" and all_archs:
        configs = [
            dataclasses.replace(config, model=f"{TINY_PREFIX}{arch}", name=f"{config.name}-{arch}")
            for arch in TINY_ARCHS
        ]
    for one in configs:
        ACTIVE.update(root=one.runs_dir / one.name, args=original)
        if one.concepts:  # a bank: one run per concept, then their cross-talk (docs/loop.md)
            from steerheal.loop.bank_run import run_bank

            bank = run_bank(one, overwrite=overwrite, resume=resume)
            ACTIVE.clear()
            print(f"{one.model}: bank {list(one.concepts)}; report {bank.root / 'report.html'}")
            continue
        result = run(one, overwrite=overwrite, resume=resume)
        ACTIVE.clear()
        if not writes_run():
            continue  # rank 0 writes the report and says what happened
        paths = report.build(result.root) if result.rounds else {}
        print(f"{one.model}: rounds {result.rounds}; stopped: {result.stop_reason}; report {paths.get('html', '-')}")


def _checked(config: RunConfig) -> None:
    """Every option checked before the model loads; the run's CPU threads set."""
    from steerheal.loop.checks import validate

    validate(config)
    torch.set_num_threads(config.torch_threads())


def command_extract(args: list[str]) -> None:
    from steerheal.loop.concepts import build_concept, round_teacher
    from steerheal.loop.model_spec import open_model

    out = _take(args, "--out")
    if out is None and not ({"-h", "--help"} & set(args)):
        raise SteerhealError("steerheal extract needs --out DIR (where vector.safetensors and vector.json go)")
    config, _ = run_config(args, "steerheal extract --out DIR", "Read the concept's teacher vector and save it.")
    _checked(config)
    model, tok = open_model(config.model, config.quant, config.device, config.seed)
    vector = round_teacher(build_concept(config, tok, model=model), model, tok, config, 0)
    vector.save(Path(out))  # type: ignore[arg-type]
    print(f"{vector} -> {out}")


def command_calibrate(args: list[str]) -> None:
    from steerheal.dose.calibrate import calibrate_dose
    from steerheal.loop.concepts import build_concept
    from steerheal.loop.model_spec import open_model
    from steerheal.read.vector import Vector

    folder = _take(args, "--vector")
    if folder is None and not ({"-h", "--help"} & set(args)):
        raise SteerhealError("steerheal calibrate needs --vector DIR (a vector saved by extract or Vector.save)")
    config, _ = run_config(args, "steerheal calibrate --vector DIR", "Set a saved vector's iso-KL dose.")
    _checked(config)
    vector = Vector.load(Path(folder))  # type: ignore[arg-type]  # checked before the model loads
    model, tok = open_model(config.model, config.quant, config.device, config.seed)
    vector = Vector.load(Path(folder), model=model)  # type: ignore[arg-type]
    prompts = build_concept(config, tok).calibration_prompts
    calibrate_dose(vector, model, tok, prompts, config.dose, 0, config.seed, config.sampling.batch_size)
    vector.save(Path(folder))  # type: ignore[arg-type]
    record = vector.calibration or {}
    print(
        f"c* = {record['c']:.4g} ({record['stat']} KL {record['value']:.4f} for target {record['target_kl']}, "
        f"{record['n_evals']} evaluations); saved to {folder}"
    )


@dataclass
class RunRound:
    """A round of a run (-1: the last complete one)."""

    run: tyro.conf.Positional[Path]
    round: int = -1


@dataclass
class ExportArgs:
    """Write a round as a plain peft adapter (--peft) or a merged dense model (--merged)."""

    run: tyro.conf.Positional[Path]
    round: int = -1
    peft: Path | None = None
    merged: Path | None = None
    overwrite: bool = False
    """Write into a non-empty folder that is not a previous export (its files of the same names are replaced)."""


def command_verify(args: list[str]) -> None:
    from steerheal.loop.saved import verify_saved

    parsed = tyro.cli(RunRound, args=args, prog="steerheal verify")
    metrics = verify_saved(parsed.run, parsed.round)
    print(json.dumps(metrics, indent=2, default=float))


@dataclass
class RunFolder:
    """A run directory."""

    run: tyro.conf.Positional[Path]


def command_report(args: list[str]) -> None:
    from steerheal.loop import report

    parsed = tyro.cli(RunFolder, args=args, prog="steerheal report")
    for kind, path in report.build(parsed.run).items():
        print(f"{kind}: {path}")


def command_export(args: list[str]) -> None:
    from steerheal.adapter.export import EXPORT_META_FILE
    from steerheal.loop.saved import load_run

    parsed = tyro.cli(ExportArgs, args=args, prog="steerheal export")
    if (parsed.peft is None) == (parsed.merged is None):
        raise SteerhealError("steerheal export needs exactly one of --peft DIR or --merged DIR")
    if parsed.peft is not None:
        check_output_folder(parsed.peft, "--peft", EXPORT_META_FILE, parsed.overwrite)
    else:
        check_output_folder(parsed.merged, "--merged", None, parsed.overwrite)  # type: ignore[arg-type]
    _model, tok, adapter = load_run(parsed.run, parsed.round)
    if parsed.peft is not None:
        adapter.export_peft(parsed.peft, overwrite=parsed.overwrite)
        print(f"peft adapter -> {parsed.peft}")
    else:
        dense = adapter.bake()
        dense.save_pretrained(parsed.merged)
        tok.save_pretrained(parsed.merged)
        print(f"merged model -> {parsed.merged}")


@dataclass
class DialArgs:
    """The student at dial g (every trained gate times g: 0 = the base, 1 = as trained), judged on the run's
    held-out prompts and logged into the run as a frontier without steering."""

    run: tyro.conf.Positional[Path]
    round: int = -1
    g: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


def command_frontier(args: list[str]) -> None:
    from steerheal.loop import report
    from steerheal.loop.saved import frontier_saved

    parsed = tyro.cli(RunRound, args=args, prog="steerheal frontier")
    result = frontier_saved(parsed.run, parsed.round)
    report.build(parsed.run)
    print(json.dumps(result["summary"], indent=2, default=float))


def command_dial(args: list[str]) -> None:
    from steerheal.loop.saved import frontier_saved

    parsed = tyro.cli(DialArgs, args=args, prog="steerheal dial")
    result = frontier_saved(parsed.run, parsed.round, alphas=(), dials=parsed.g)
    for v in result["variants"]:
        line = {"variant": v["variant"], "trait_shift": v["trait_shift"], "kl_own_p95": v["kl_own"]["p95"]}
        print(json.dumps({**line, "judges": v["judges"]}, default=float))


COMMANDS = {
    "run": command_run,
    "extract": command_extract,
    "calibrate": command_calibrate,
    "verify": command_verify,
    "report": command_report,
    "export": command_export,
    "frontier": command_frontier,
    "dial": command_dial,
}


def main(argv: list[str] | None = None) -> None:
    """The command line. A user error (a SteerhealError, an OS error) is one logged message and exit status 2,
    never a traceback; Ctrl-C is one line saying where it stopped and how to resume (exit status 130)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = COMMANDS.get(args[0])
    if command is None:
        print(USAGE, file=sys.stderr)
        raise SystemExit(f"steerheal: unknown command {args[0]!r}")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    ACTIVE.clear()
    was_verbose = is_verbose()
    # a program: what it chose and how long each stage took (rank 0 of a multi-process launch speaks for all;
    # the other ranks log warnings and errors only)
    verbose(os.environ.get("RANK", "0") == "0")
    try:
        with quiet_bitsandbytes():
            command(args[1:])
    except SteerhealError as err:
        resume = f"; to continue: {resume_command(ACTIVE['args'])}" if _round_failed(err) and ACTIVE else ""
        logger.error(f"{err}{resume}")
        raise SystemExit(2) from err
    except OSError as err:  # a file system error no steerheal check caught: still no traceback
        logger.error(f"{err}; check the path and the disk, then run again")
        raise SystemExit(2) from err
    except KeyboardInterrupt:
        if ACTIVE:
            line = f"interrupted {_where(ACTIVE['root'])}; continue with: {resume_command(ACTIVE['args'])}"
        else:
            line = f"interrupted ({args[0]}); no run was being written"
        print(f"steerheal: {line}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        verbose(was_verbose)


def _round_failed(err: SteerhealError) -> bool:
    from steerheal.loop.rounds import RoundFailed

    return isinstance(err, RoundFailed)


if __name__ == "__main__":
    main()
