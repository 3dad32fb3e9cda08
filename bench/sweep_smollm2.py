"""`just sweep-smollm2`: a small sweep of the smollm2 preset's heal settings (lr x tau x n_pairs), one round each.

Round 0 of the `smollm2` preset on SmolLM2-135M-Instruct, through the loop's own code: `Loop.round_data`
(extract, calibrate, pairs, round-0 reference) runs once per n_pairs, and for each (lr, tau) a fresh model with
a fresh adapter (the same seed, so the same initial LoRA) runs `Loop.heal_and_verify` (heal, fold, verify) on
those pairs, against that reference. The reference (base and steered generations of the 64 held-out prompts)
is shared by all points when the dose is the same (it is built again if n_pairs gave another dose).

Columns: retain (the teacher projection, the round table's column), VADER (a judge steerheal did not write:
mean compound of the student's held-out completions minus the base's; steering's own shift beside it), KL p95
(student vs base on the base's greedy continuations), the barrier's active fraction in the last epoch, pairs
kept, and the seconds of heal + verify. Every finished point is appended to a results file (`--results`), so an
interrupted sweep keeps what it measured and `--table` prints the table again without recomputing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

LRS = (1e-3, 3e-3)
TAUS = (0.02, 0.2)
N_PAIRS = (48, 24)  # the preset's 48 first
PRESET = {"n_pairs": 48, "lr": 1e-3, "tau": 0.02}  # the smollm2 preset's point, in the key order of a row
DEFAULT_RESULTS = Path(tempfile.gettempdir()) / "steerheal-sweep-smollm2.jsonl"


class Recording:
    """The loop's sampler with a record of every call's completions (the student's held-out texts for VADER)."""

    def __init__(self) -> None:
        from steerheal.read.sampler import TransformersSampler

        self.inner, self.calls = TransformersSampler(), []

    def sample(self, model, tok, prompts, *args: Any, **kwargs: Any) -> list[list[int]]:
        ids = self.inner.sample(model, tok, prompts, *args, **kwargs)
        self.calls.append(ids)
        return ids


def _config(n_pairs: int, lr: float, tau: float, root: Path) -> Any:
    import steerheal as sh

    config = sh.preset("smollm2")
    heal = dataclasses.replace(config.heal, lr=lr, tau=tau)
    return dataclasses.replace(config, n_pairs=n_pairs, heal=heal, threads=1, runs_dir=root, name="sweep")


def _loop(config: Any, root: Path) -> Any:
    from steerheal.loop.concepts import build_concept
    from steerheal.loop.model_spec import open_model
    from steerheal.loop.rounds import Loop, _attach
    from steerheal.loop.rundir import RunDir

    run = RunDir.create(root, config.to_dict(), config.seed, overwrite=True)
    model, tok = open_model(config.model, config.quant, config.device, config.seed)
    return Loop(config, run, model, tok, _attach(config, model), build_concept(config, tok, root, model))


def _vader(prompts: list[str], texts: list[str]) -> float:
    from steerheal.judges.trait import VaderJudge

    return VaderJudge()(list(zip(prompts, texts, strict=True)))["compound"]


def measure(results: Path, workdir: Path, points: set[tuple[int, float, float]] | None = None) -> None:
    from steerheal.lm.generate import decode
    from steerheal.read.sampler import use_sampler

    torch.set_num_threads(1)
    done = {(r["n_pairs"], r["lr"], r["tau"]) for r in _read(results)}
    reference = None
    for n_pairs in N_PAIRS:
        todo = [
            (lr, tau)
            for lr in LRS
            for tau in TAUS
            if (n_pairs, lr, tau) not in done and (points is None or (n_pairs, lr, tau) in points)
        ]
        if not todo:
            continue
        data_times: dict[str, float] = {}
        source = _loop(_config(n_pairs, *todo[0], workdir / f"data{n_pairs}"), workdir / f"data{n_pairs}")
        source.reference = reference  # round_data builds the reference only when there is none yet
        data = source.round_data(0, data_times)
        if source.reference.teacher.coeff != data.dose["C"]:  # another dose: steering's reference differs
            source.reference = None
            data_times = {}
            data = source.round_data(0, data_times)
        reference = source.reference
        del source
        for lr, tau in todo:
            config = _config(n_pairs, lr, tau, workdir / "point")
            loop = _loop(config, workdir / "point")
            loop.reference = reference
            times: dict[str, float] = {}
            recording = Recording()
            with use_sampler(recording):
                metrics, _ = loop.heal_and_verify(0, data, times)
            concept = loop.concept
            student = decode(loop.tok, recording.calls[0])  # verify's first sampling: the student's completions
            users = concept.eval_prompts
            row = {
                "n_pairs": n_pairs,
                "lr": lr,
                "tau": tau,
                "retain": metrics["retain"],
                "vader_base": _vader(users, reference.base.texts),
                "vader_steered": _vader(users, reference.steered.texts),
                "vader_student": _vader(users, student),
                "kl_p95": metrics["coherence"]["kl_tail_p95"],
                "distinct_2": metrics["coherence"].get("distinct_2"),
                "active": metrics["heal"]["active_last_epoch"],
                "D_last": metrics["heal"]["D_last_epoch"],
                "kept": data.dose["kept"],
                "pairs": data.dose["pairs"],
                "alpha": data.dose["alpha"],
                "c": data.dose["c"],
                "heal_s": times["round 0 heal"],
                "verify_s": times["round 0 verify"],
                "data_s": data_times,
                "load": os.getloadavg()[0],
            }
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr, flush=True)
            del loop
            gc.collect()


def _read(results: Path) -> list[dict[str, Any]]:
    if not results.is_file():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "undefined" if value is None else format(value, spec)


def table(results: Path) -> None:
    rows = sorted(_read(results), key=lambda r: (r["n_pairs"], r["lr"], r["tau"]))
    loads = [r["load"] for r in rows]
    print(
        f"SmolLM2-135M-Instruct, `smollm2` preset, round 0 only, seed 0, 1 torch thread; load average (1 min) "
        f"{min(loads):.1f}-{max(loads):.1f} during the points (2 cores, shared), so seconds are upper bounds."
    )
    print(
        "VADER: mean compound of the 64 held-out completions, student minus base (steering's shift in "
        "brackets); active: the barrier's active fraction in the last epoch (D its mean rmse KL there)."
    )
    print()
    print(
        "| n_pairs | lr | tau | retain (projection) | VADER shift student (steering) | KL p95 | active (D) | "
        "pairs kept | heal + verify s | |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "preset" if (r["n_pairs"], r["lr"], r["tau"]) == tuple(PRESET.values()) else ""
        print(
            f"| {r['n_pairs']} | {r['lr']:g} | {r['tau']:g} | {_fmt(r['retain'])} | "
            f"{r['vader_student'] - r['vader_base']:+.3f} ({r['vader_steered'] - r['vader_base']:+.3f}) | "
            f"{r['kl_p95']:.3g} | {r['active']:.2f} ({r['D_last']:.3f}) | {r['kept']}/{r['pairs']} | "
            f"{r['heal_s']:.0f} + {r['verify_s']:.0f} | {mark} |"
        )
    # the shared stages, once per process and n_pairs (a later process builds the reference again)
    served: dict[str, list[str]] = {}
    for r in rows:
        parts = ", ".join(f"{name.split()[-1]} {s:.0f} s" for name, s in r["data_s"].items())
        served.setdefault(f"n_pairs {r['n_pairs']}: {parts}", []).append(f"lr {r['lr']:g} tau {r['tau']:g}")
    print()
    for shared, points in served.items():
        print(f"- shared stages for {shared}; used by {', '.join(points)}")


def stages(results: Path) -> None:
    """Time per stage of one smollm2 round: round 0 at the preset's point (its shared stages and its heal + verify)."""
    row = next((r for r in _read(results) if (r["n_pairs"], r["lr"], r["tau"]) == tuple(PRESET.values())), None)
    if row is None:
        print("(the preset's point is not in the results yet)")
        return
    times = {name.split()[-1]: s for name, s in row["data_s"].items()}
    times.update(heal=row["heal_s"], verify=row["verify_s"])
    print(
        f"round 0 of the smollm2 preset (48 pairs, {row['kept']} kept), 1 torch thread, load average (1 min) "
        f"{row['load']:.1f} when it ended, on 2 shared cores: an upper bound for a quiet machine"
    )
    print()
    print("| " + " | ".join(times) + " | total |")
    print("|" + "---|" * (len(times) + 1))
    print("| " + " | ".join(f"{s:.0f} s" for s in times.values()) + f" | {sum(times.values()):.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--table", action="store_true", help="only print the table of the results file")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/smollm2.md")
    parser.add_argument(
        "--points",
        nargs="+",
        metavar="N:LR:TAU",
        help="measure only these grid points (default: every point not in --results)",
    )
    args = parser.parse_args()
    points = None
    if args.points:
        points = {(int(n), float(lr), float(tau)) for n, lr, tau in (p.split(":") for p in args.points)}
    if not args.table:
        with tempfile.TemporaryDirectory() as workdir:
            measure(args.results, Path(workdir), points)
    sys.path.insert(0, str(Path(__file__).parent))
    from docs_section import run_into_docs

    run_into_docs("smollm2.md", "sweep-smollm2", "just sweep-smollm2", lambda: table(args.results))
    run_into_docs("benchmarks.md", "smollm2-stages", "just sweep-smollm2", lambda: stages(args.results))


if __name__ == "__main__":
    main()
