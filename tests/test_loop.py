"""The loop on a tiny model: run directory, events, manifests, report, resume after SIGKILL, export."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import steerheal as sh
from steerheal.loop import report
from steerheal.loop.rounds import RoundFailed, run
from steerheal.loop.runconfig import RunConfig, preset
from steerheal.loop.rundir import open_existing
from steerheal.loop.saved import load_run, verify_saved
from steerheal.loop.stoprules import stop_rule as _stop


def _flat(value, prefix=""):
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix: value}


def _config(tmp: Path, name: str = "loop", **kw) -> RunConfig:
    return dataclasses.replace(preset("fast-dev-run"), runs_dir=tmp, name=name, model="tiny:llama", **kw)


def test_run_directory_events_manifests_report_and_reproducible_verify(tmp_path):
    config = _config(tmp_path)
    result = run(config)
    root = tmp_path / "loop"
    assert result.rounds == [0, 1] and result.stop_reason.startswith("max_rounds")
    for name in ("config.json", "env.json", "events.jsonl"):
        assert (root / name).is_file()
    for k in (0, 1):
        folder = root / f"round_{k:02d}"
        for name in (
            "vector.safetensors",
            "vector.json",
            "pairs.jsonl",
            "metrics.json",
            "samples.jsonl",
            "manifest.json",
            "adapter/gated.json",
        ):
            assert (folder / name).is_file(), name
    assert RunConfig.from_dict(json.loads((root / "config.json").read_text())) == config
    env = json.loads((root / "env.json").read_text())
    assert env["attempts"][0]["attempt"] == 1 and env["attempts"][0]["torch"] == torch.__version__
    events = open_existing(root).events()
    assert all(e["attempt"] == 1 for e in events)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "stopped" and kinds.count("round_end") == 2
    assert kinds.count("heal_step") > 0
    metrics = json.loads((root / "round_01" / "metrics.json").read_text())
    for key in ("trait", "retain", "off_target", "direction", "internalisation", "coherence", "dose", "heal"):
        assert key in metrics
    assert set(metrics["direction"]["cos_to_round0"]) == set(metrics["direction"]["noise_ceiling"])
    samples = [json.loads(line) for line in (root / "round_01" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == config.verify.n_samples and {"prompt", "base", "steered", "student"} <= set(samples[0])
    paths = report.build(root)
    table = (root / "report.md").read_text()
    assert "| round |" in table and "max_rounds" in table and paths["png"].stat().st_size > 0
    assert "<section id='verdict'>" in paths["html"].read_text()  # the report's sections: tests/test_report.py
    again = verify_saved(root, 1)  # deterministic: recomputing a round's verification reproduces it
    assert again["trait"] == metrics["trait"] and again["coherence"] == metrics["coherence"]
    with pytest.raises(sh.SteerhealError, match="exists and is not empty; pass --overwrite"):
        run(config)
    finished = run(config, resume=True)
    assert finished.rounds == [0, 1] and finished.metrics == [], "a finished run has nothing to resume"
    with pytest.raises(sh.SteerhealError, match="another configuration"):
        run(dataclasses.replace(config, seed=5), resume=True)
    with pytest.raises(sh.SteerhealError, match="contradict"):
        run(config, overwrite=True, resume=True)


def test_sigkill_mid_round_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A run killed inside round 1 resumes from round 0's checkpoint and ends where an uninterrupted run
    ends, metric for metric (CPU, one thread, same seed)."""
    config = _config(tmp_path, "whole")
    whole = run(config)
    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "steerheal.cli",
        "run",
        "--preset",
        "fast-dev-run",
        "--model",
        "tiny:llama",
        "--runs-dir",
        str(tmp_path),
        "--name",
        "killed",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            log = killed / "events.jsonl"
            if (
                log.exists()
                and '"round": 1' in log.read_text()
                and '"heal_step"' in log.read_text().split('"round_start"')[-1]
            ):
                break
            if process.poll() is not None:
                pytest.fail("the run finished before it could be killed")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    run_dir = open_existing(killed)
    assert run_dir.complete_rounds() == [0], "killed inside round 1: only round 0 is complete"
    assert not (killed / "round_01" / "manifest.json").exists()
    resumed = run(dataclasses.replace(config, name="killed"), resume=True)
    assert resumed.rounds == [0, 1]
    mine = json.loads((killed / "round_01" / "metrics.json").read_text())
    theirs = json.loads((tmp_path / "whole" / "round_01" / "metrics.json").read_text())
    for key in ("trait", "retain", "coherence", "off_target", "truth"):  # from sampled texts: exactly equal
        assert mine.get(key) == theirs.get(key), key
    assert mine["dose"]["kept"] == theirs["dose"]["kept"]
    # Activation statistics agree to float32 rounding: round 0 ran in the killed subprocess, and MKL's
    # float32 kernels are not bitwise reproducible across processes (measured: 6e-8 on a cosine).
    for key in ("direction", "internalisation"):
        assert _flat(mine[key]) == pytest.approx(_flat(theirs[key]), rel=1e-5, abs=1e-6), key
    assert mine["dose"]["c"] == pytest.approx(theirs["dose"]["c"], rel=1e-5)
    events = open_existing(killed).events()
    assert {e["attempt"] for e in events} == {1, 2}
    assert [e["round"] for e in report.round_events(open_existing(killed))] == [0, 1]
    assert json.loads((killed / "round_01" / "manifest.json").read_text())["attempt"] == 2
    assert whole.rounds == [0, 1]


def test_load_run_and_export_reproduce_the_student(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from steerheal.cli import main

    run(_config(tmp_path))
    root = tmp_path / "loop"
    model, tok, adapter = load_run(root)
    assert [r.name for r in adapter.history] == ["round_0", "round_1"]
    ids = torch.tensor([tok("The harbour at noon, gulls").input_ids])
    with torch.no_grad():
        student = model(ids).logits
    main(["export", str(root), "--peft", str(tmp_path / "peft")])
    main(["export", str(root), "--merged", str(tmp_path / "merged")])
    base, _ = sh.tiny_model("llama")
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(base, tmp_path / "peft")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
    torch.testing.assert_close(peft_logits, student, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged, student, rtol=0, atol=1e-4)
    main(["export", str(root), "--peft", str(tmp_path / "peft")])  # a previous export may be written again
    mode = 0o666 & ~_umask()
    assert (tmp_path / "peft" / "adapter_model.safetensors").stat().st_mode & 0o777 == mode, "as save_pretrained"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for flag, folder in (("--peft", "mine"), ("--merged", "peft")):  # checked before the model loads
        with pytest.raises(SystemExit, match="2"):
            main(["export", str(root), flag, str(tmp_path / folder)])
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    main(["export", str(root), "--peft", str(tmp_path / "mine"), "--overwrite"])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and (
        tmp_path / "mine" / "adapter_config.json"
    ).is_file()
    _, _, first_adapter = load_run(root, 0)
    assert [r.name for r in first_adapter.history] == ["round_0"]
    with pytest.raises(sh.SteerhealError, match="round=5 is not one of them"):
        load_run(root, 5)
    with pytest.raises(SystemExit, match="2"):  # the CLI logs the SteerhealError and exits with status 2
        main(["export", str(root)])


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_round_that_fails_is_an_error_not_a_stop_and_resume_retries_it(tmp_path, logs):
    """Round 1 asks for an unreachable dose (round_decay 1e4): the run exits non-zero naming the round and the
    exact --resume command, keeps round 0, records a round_failed event and no stop; --resume retries round 1."""
    from steerheal.cli import main

    args = ["run", "--preset", "fast-dev-run", "--model", "tiny:llama", "--runs-dir", str(tmp_path)]
    args += ["--name", "fails", "--dose.round-decay", "1e4"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    message = next(m for m in logs if m.startswith("ERROR"))
    assert "round 1 of run" in message and "above what this statistic reaches" in message
    assert "to continue: steerheal run --preset fast-dev-run" in message and message.rstrip().endswith("--resume")
    root = tmp_path / "fails"
    assert not (root / "stopped.json").exists() and not (root / "run.lock").exists()
    assert open_existing(root).complete_rounds() == [0]
    assert [e["round"] for e in open_existing(root).events() if e["event"] == "round_failed"] == [1]
    base = preset("fast-dev-run")
    config = _config(tmp_path, "fails", dose=dataclasses.replace(base.dose, round_decay=1e4))
    with pytest.raises(RoundFailed, match="round 1 of run"):
        run(config, resume=True)  # retried (and fails the same way): attempt 2 ran round 1 again
    assert {e["attempt"] for e in open_existing(root).events() if e["event"] == "round_failed"} == {1, 2}
    assert report.build(root)["md"].is_file(), "the complete rounds still make a report"


def test_resume_drops_an_event_line_a_kill_cut_short(tmp_path):
    from steerheal.loop.rundir import RunDir

    run_dir = RunDir.create(tmp_path / "r", {"a": 1}, 0, overwrite=False)
    run_dir.log({"event": "x"})
    with open(tmp_path / "r" / "events.jsonl", "a") as handle:
        handle.write('{"event": "cut sh')
    resumed = RunDir.resume(tmp_path / "r", {"a": 1}, 0, normalise=lambda d: d)
    resumed.log({"event": "y"})
    assert [e["event"] for e in resumed.events()] == ["x", "y"] and resumed.attempt == 2


def test_stop_rules_check_the_coherence_floor_first():
    config = preset("toyworld")

    def metrics(grammar=0.95, distinct=0.5, kl=0.2, retain=0.5):
        return {
            "coherence": {"distinct_2": distinct, "kl_tail_p95": kl},
            "retain": retain,
            "truth": {"student": {"grammar_ok": grammar}},
        }

    reason, broken = _stop(config, 0, metrics(grammar=0.5, retain=5.0), None)
    assert broken and reason.startswith("coherence floor: grammar_ok 0.500 < 0.9")
    reason, broken = _stop(config, 0, metrics(kl=9.0), None)
    assert broken and "KL(student‖base) p95 9.000 > 3.0" in reason
    assert _stop(config, 1, metrics(retain=0.51), metrics(retain=0.5))[0].startswith("trait gain")
    assert _stop(config, 1, metrics(retain=None), metrics(retain=0.5)) == (None, False), "undefined: no ratio"
    assert _stop(config, 2, metrics(retain=0.9), metrics(retain=0.5))[0].startswith("max_rounds: 3")
    assert _stop(config, 0, metrics(), None) == (None, False)
