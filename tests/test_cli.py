"""The `steerheal` command: help, fast-dev-run on every tiny architecture, the toyworld main job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import steerheal as sh
from steerheal.cli import main
from steerheal.loop.rundir import open_existing


def test_help_lists_every_command_and_run_help_shows_presets():
    out = subprocess.run([sys.executable, "-m", "steerheal.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("run", "extract", "calibrate", "verify", "report", "export"):
        assert f"  {command}" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "steerheal.cli", "run", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--preset NAME" in out.stdout and "--heal.lam" in out.stdout
    assert "--concept.mood" in out.stdout and "--stop.max-rounds" in out.stdout
    with pytest.raises(SystemExit, match="unknown command 'fly'"):
        main(["fly"])
    with pytest.raises(SystemExit):
        main(["run", "--preset", "huge"])


def test_fast_dev_run_covers_every_tiny_architecture(tmp_path, capsys):
    """What `just fast-dev-run` runs: the whole loop on every supported architecture, in one process."""
    main(["run", "--preset", "fast-dev-run", "--overwrite", "--runs-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    for arch in sh.TINY_ARCHS:
        root = tmp_path / f"fast-dev-run-{arch}"
        assert open_existing(root).complete_rounds() == [0, 1], arch
        assert (root / "report.html").is_file() and f"tiny:{arch}: rounds [0, 1]" in printed
        assert json.loads((root / "round_00" / "metrics.json").read_text())["dose"]["kept"] >= 1


def test_toyworld_main_job_distils_the_mood(tmp_path, logs):
    """`just run` on toyworld, one small round: the unsteered student carries the mood the steering taught; the
    program logs the round's summary line once."""
    main(["run", "--runs-dir", str(tmp_path), "--n-pairs", "64", "--verify.n-prompts", "32", "--stop.max-rounds", "1"])
    metrics = json.loads((tmp_path / "toyworld" / "round_00" / "metrics.json").read_text())
    truth = metrics["truth"]
    assert truth["student"]["mood_rate"] > truth["base"]["mood_rate"] + 0.15
    assert truth["student"]["grammar_ok"] >= 0.85
    assert sum("round 0: c*=" in m for m in logs) == 1


def test_extract_and_calibrate_commands(tmp_path, capsys):
    main(["extract", "--out", str(tmp_path / "v"), "--model", "tiny:gpt2"])
    assert sh.Vector.load(tmp_path / "v").coeff is None
    main(["calibrate", "--vector", str(tmp_path / "v"), "--model", "tiny:gpt2", "--dose.liveness-samples", "0"])
    calibrated = sh.Vector.load(tmp_path / "v")
    assert calibrated.coeff is not None and abs(calibrated.calibration["value"] - 1.0) <= 0.05
    assert "c* =" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["extract", "--model", "tiny:gpt2"])  # no --out
    with pytest.raises(SystemExit):
        main(["run", "--model", "tiny:bert"])
