"""1 process against 2 (torchrun, gloo on CPU, one torch thread per rank) for one reduced toyworld round: wall
time of the whole command (imports and model loading included) and of the round (round_start -> round_end
events), interleaved, median of REPEATS; checks that both write the same pairs.jsonl and samples.jsonl.

`just bench-scale` (writes docs/benchmarks.md section `scale`); `just bench-scale --smollm2` adds SmolLM2-135M's
sampling stage (the same command with `--model smollm2-135m-instruct`, round time only)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = 2
ROUND = ["--n-pairs", "32", "--verify.n-prompts", "16", "--stop.max-rounds", "1", "--verify.no-frontier"]
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLING = ("calibrate", "pairs", "reference")  # the stages sharded by prompt (verify is partly replicated)


def _once(ranks: int, model: list[str], runs: Path, name: str) -> tuple[float, float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("BEARTYPE", None)
    args = ["run", *model, *ROUND, "--threads", "1", "--runs-dir", str(runs), "--name", name]
    if ranks == 1:
        cmd = [sys.executable, "-m", "steerheal", *args]
    else:
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(_port()), "-m", "steerheal"]
        cmd += args
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    events = [json.loads(line) for line in (runs / name / "events.jsonl").read_text().splitlines()]
    stamp = {e["event"]: datetime.datetime.fromisoformat(e["time"]) for e in events if e.get("round") == 0}
    stages = next(e["seconds"] for e in events if e["event"] == "stage_times" and e["round"] == 0)
    sampling = sum(stages.get(s, 0.0) for s in SAMPLING)
    return wall, (stamp["round_end"] - stamp["round_start"]).total_seconds(), sampling


def _compare(model: list[str], label: str, repeats: int = REPEATS) -> None:
    runs = Path(tempfile.mkdtemp(prefix="steerheal-scale-"))
    try:
        times: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
        for i in range(repeats):
            for ranks in (1, 2):  # interleaved
                times[ranks].append(_once(ranks, model, runs, f"r{ranks}-{i}"))
        same = all(
            (runs / "r1-0" / "round_00" / f).read_bytes() == (runs / f"r2-{i}" / "round_00" / f).read_bytes()
            for i in range(repeats)
            for f in ("pairs.jsonl", "samples.jsonl")
        )
        wall, rnd, smp = ({r: statistics.median(x[i] for x in t) for r, t in times.items()} for i in range(3))
        print(
            f"| {label} | {wall[1]:.1f} | {wall[2]:.1f} | {wall[2] / wall[1]:.2f} | {rnd[1]:.1f} | {rnd[2]:.1f} | "
            f"{rnd[2] / rnd[1]:.2f} | {smp[1]:.1f} | {smp[2]:.1f} | {smp[2] / smp[1]:.2f} | {'yes' if same else 'NO'} |"
        )
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def main() -> None:
    print(f"{os.cpu_count()} CPU cores, load average before {os.getloadavg()[0]:.1f}; one torch thread per rank;")
    print(f"one round of `steerheal run {' '.join(ROUND)}`; median of {REPEATS}, 1 and 2 processes interleaved.")
    print(f"sampling = the stages sharded by prompt: {', '.join(SAMPLING)} (their stage_times in events.jsonl).")
    print()
    print(
        "| model | command 1 proc (s) | 2 procs (s) | ratio | round 1 proc (s) | 2 procs (s) | ratio | "
        "sampling 1 proc (s) | 2 procs (s) | ratio | same files |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    _compare([], "toyworld")
    if "--smollm2" in sys.argv:
        _compare(["--model", "smollm2-135m-instruct"], "smollm2-135m-instruct (1 repeat)", repeats=1)
    else:
        print("| smollm2-135m-instruct | not measured here (`just bench-scale --smollm2`) | | | | | | | | | |")
    print()
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    from docs_section import run_into_docs

    run_into_docs("benchmarks.md", "scale", "just bench-scale", main)
