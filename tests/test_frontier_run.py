"""The frontier wired into a run: computed once after the last round (verify.frontier), stored as an event,
resumable, and on demand through `steerheal frontier` / `steerheal dial`."""

from __future__ import annotations

import json

from steerheal.cli import main
from steerheal.loop.rundir import open_existing

SMALL = ["--n-pairs", "16", "--verify.n-prompts", "8", "--stop.max-rounds", "1", "--dose.n-prompts", "8"]
SMALL += ["--dose.probe-size", "8", "--verify.max-new-tokens", "24", "--verify.no-readout"]


def _frontiers(root):
    return [e for e in open_existing(root).events() if e.get("event") == "frontier"]


def test_toyworld_run_ends_with_one_frontier_and_dial_adds_a_sweep(tmp_path, capsys):
    main(["run", "--runs-dir", str(tmp_path), *SMALL])
    root = tmp_path / "toyworld"
    [event] = _frontiers(root)
    result = event["frontier"]
    assert event["round"] == 0 and result["kind"] == "steerheal.frontier" and result["c_star"] > 0
    kinds = [(v["kind"], v["value"]) for v in result["variants"]]
    assert (
        kinds[0][0] == "base"
        and sum(k == "steering" for k, _ in kinds) == 5
        and sum(k == "student" for k, _ in kinds) == 5
    )
    steering = {v["value"]: v for v in result["variants"] if v["kind"] == "steering"}
    # judged by the world's exact mood rate: more steering, more mood, and more distance from the base
    assert steering[2.0]["trait_shift"] > steering[0.25]["trait_shift"]
    assert steering[2.0]["kl_own"]["p95"] > steering[0.25]["kl_own"]["p95"]
    assert set(result["comparisons"]) >= {"kl_own", "kl_greedy"}
    # a resume of the finished run computes nothing more; the report reads the event
    main(["run", "--runs-dir", str(tmp_path), *SMALL, "--resume"])
    assert len(_frontiers(root)) == 1
    main(["dial", str(root), "--g", "0", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by_name = {line["variant"]: line for line in lines}
    assert len(lines) == 3  # the base, then the student at g = 0 and g = 1
    zero = next(
        line for name, line in by_name.items() if name != lines[0]["variant"] and "0" in name and "1" not in name
    )
    assert zero["kl_own_p95"] == 0.0 and zero["trait_shift"] == 0.0  # dial 0 is the base bit for bit
    assert len(_frontiers(root)) == 2
