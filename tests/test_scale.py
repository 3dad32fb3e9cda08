"""The loop over more than one process (docs/scale.md): torchrun with 2 ranks on CPU (gloo) writes the same run as
one process; a rank that dies or hangs fails the run within the configured timeout, keeping the complete rounds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import steerheal as sh
from conftest import tiny
from steerheal import cli, dist
from steerheal.lm.generate import sample, sample_shard
from steerheal.loop.rundir import open_existing
from steerheal.read.sampler import TransformersSampler, sampler, use_sampler

TORCHRUN = Path(sys.executable).with_name("torchrun")
# batch size 2: the 4 prompts of a fast-dev-run round are 2 batches, so both ranks sample and score in every stage
RUN = ["run", "--model", "tiny:llama", "--sampling.batch-size", "2"]
# the same round sizes on toyworld's LM and its own mood concept
TOYWORLD = [
    "run",
    "--preset",
    "fast-dev-run",
    "--model",
    "toyworld",
    "--concept.source",
    "toyworld",
    "--sampling.batch-size",
    "2",
]


def _env(**extra: str) -> dict[str, str]:
    src = str(Path(sh.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}
    env.pop("BEARTYPE", None)  # the launched ranks run unchecked: imports under the shape-check hook cost 2x
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_seconds(metrics: dict) -> dict:
    return {**metrics, "heal": {k: v for k, v in metrics["heal"].items() if k != "seconds"}}


def test_sharded_sampling_is_the_one_process_sampling_and_the_seam_replaces_it():
    model, tok = tiny("llama")
    prompts = [f"prompt number {i} " + "word " * (i % 5) for i in range(7)]
    whole = sample(model, tok, prompts, seed=3, max_new_tokens=6, batch_size=2)
    shards = [
        sample_shard(model, tok, prompts, 3, max_new_tokens=6, batch_size=2, rank=r, world_size=3) for r in range(3)
    ]
    assert sorted(i for s in shards for i in s) == list(range(7)), "every prompt on exactly one rank"
    assert all(len(s) > 0 for s in shards)
    assert {i: c for s in shards for i, c in s.items()} == dict(enumerate(whole))
    assert dist.world_size() == 1 and dist.mine(5) == [0, 1, 2, 3, 4] and dist.gather_indexed({0: "a"}, 1) == ["a"]

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[dict] = []

        def sample(self, model, tok, prompts, seed=0, **options):
            self.calls.append({"n": len(prompts), "seed": seed, **options})
            return TransformersSampler().sample(model, tok, prompts, seed, **options)

    vector = sh.Vector.train(model, tok, ["a happy day"] * 2, ["a sad day"] * 2, [1], "mean_diff", "mean")
    vector.coeff = 4.0
    recorder = Recorder()
    with use_sampler(recorder):
        assert sampler() is recorder
        pairs = sh.make_pairs(model, tok, vector, prompts[:3], seed=1, sampling=sh.SamplingConfig(max_new_tokens=5))
    assert isinstance(sampler(), TransformersSampler) and isinstance(recorder, sh.Sampler)
    steered = [c for c in recorder.calls if c.get("steering") is not None]
    assert len(recorder.calls) == 2 and len(steered) == 1, "make_pairs samples only through the seam"
    assert all(torch.equal(steered[0]["steering"][k], 4.0 * vector.directions[k]) for k in vector.layers)
    with vector.steer(model):
        assert [p.chosen_ids for p in pairs] == sample(model, tok, prompts[:3], 1, max_new_tokens=5)


@pytest.mark.parametrize("run", [RUN, TOYWORLD], ids=["tiny", "toyworld"])
def test_two_ranks_write_the_run_one_process_writes(tmp_path, run):
    """torchrun --nproc_per_node 2 -m steerheal run: world size 2 (env.json), byte-identical pairs.jsonl and verify
    texts, equal metrics (but the heal's seconds), and each rank's heal equal to rank 0's before the broadcast."""
    cli.main([*run, "--runs-dir", str(tmp_path), "--name", "one"])
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_port()), "-m", "steerheal"]
    done = subprocess.run(
        [*cmd, *run, "--runs-dir", str(tmp_path), "--name", "two"], env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    env = json.loads((two / "env.json").read_text())["attempts"][0]
    assert (
        env["world_size"] == 2 and [r["rank"] for r in env["ranks"]] == [0, 1] and "rank b % world_size" in env["shard"]
    )
    assert json.loads((one / "env.json").read_text())["attempts"][0]["world_size"] == 1
    assert not (two / "run.lock").exists()
    for k in (0, 1):
        for name in ("pairs.jsonl", "samples.jsonl"):
            a, b = (one / f"round_{k:02d}" / name).read_bytes(), (two / f"round_{k:02d}" / name).read_bytes()
            assert a == b, f"round {k} {name}"
        metrics = [json.loads((r / f"round_{k:02d}" / "metrics.json").read_text()) for r in (one, two)]
        assert _without_seconds(metrics[0]) == _without_seconds(metrics[1])
    synced = [e for e in open_existing(two).events() if e["event"] == "ranks_synced"]
    assert len(synced) == 2 and all(e["adapter_max_abs_diff"] == [0.0, 0.0] for e in synced)
    assert all(e["vector_max_abs_diff"] == [0.0, 0.0] for e in synced)
    assert [e["event"] for e in open_existing(two).events()].count("run_start") == 1, "rank 0 alone writes events"


HANG_RANK_1_IN_ROUND_1 = """
import os, sys, time
import steerheal.loop.rounds as rounds
from steerheal import cli
calls = []
real = rounds.heal
def heal(*args, **kwargs):
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 2:
        time.sleep(600)  # rank 1 hangs in round 1's heal: alive, silent (a dead one is seen by gloo at once)
    return real(*args, **kwargs)
rounds.heal = heal
cli.main(sys.argv[1:])
"""


def _ranks(code: str, args: list[str], timeout: str) -> list[subprocess.Popen]:
    port = str(_port())
    out = []
    for r in (0, 1):
        env = _env(
            RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port, STEERHEAL_DIST_TIMEOUT=timeout,
        )  # fmt: skip
        cmd = [sys.executable, "-c", code, *args]
        out.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return out


def test_a_hung_rank_fails_the_run_within_the_timeout_and_the_complete_rounds_stand(tmp_path):
    """No launcher agent to stop the others (as when another machine stops answering): rank 1 hangs in round 1,
    rank 0 fails round 1 at the timeout (exit 2, `round_failed`, lock released) and round 0 stands."""
    rank0, rank1 = _ranks(HANG_RANK_1_IN_ROUND_1, [*RUN, "--runs-dir", str(tmp_path), "--name", "k"], "8")
    log = tmp_path / "k" / "events.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and '"round": 1, "seed"' not in (log.read_text() if log.exists() else ""):
            assert rank0.poll() is None, rank0.stdout.read()[-3000:]
            time.sleep(0.1)
        started = time.monotonic()  # round 1 began: rank 0 reaches the heal's broadcast within seconds
        assert rank0.wait(timeout=120) == 2, rank0.stdout.read()[-3000:]
        waited = time.monotonic() - started
        output = rank0.stdout.read()
    finally:
        for p in (rank0, rank1):
            if p.poll() is None:
                p.kill()
    assert 8 <= waited < 8 + 40, f"rank 0 failed after {waited:.1f} s with an 8 s timeout"
    assert "--resume" in output and "did not answer within 8 s" in output, output[-2000:]
    run_dir = open_existing(tmp_path / "k")
    assert run_dir.complete_rounds() == [0]
    failed = [e for e in run_dir.events() if e["event"] == "round_failed"]
    assert [e["round"] for e in failed] == [1] and "rank 0 of 2" in failed[0]["error"]
    assert not (tmp_path / "k" / "run.lock").exists()
