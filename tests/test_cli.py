"""The main job (`steerheal run`) and `steerheal extract`, run in-process on tiny models."""

from __future__ import annotations

import subprocess
import sys

import pytest

import steerheal as sh
from steerheal.cli import ExtractArgs, RunArgs, extract, neutral_prompts, run
from steerheal.pairs import read_pairs


def test_run_on_toyworld_calibrates_and_makes_pairs_that_move_joy(tmp_path):
    table = run(RunArgs(out=tmp_path / "demo", alphas=(1.0, 3.0), n_eval=16))
    dose, kept, joy = table["dose (x c*)"].to_list(), table["kept"].to_list(), table["joy rate"].to_list()
    assert dose == [0.0, 1.0, 3.0] and kept[0] is None
    assert joy[1] > joy[0] + 0.3 and kept[1] >= 0.7 and kept[2] <= 0.2, "coherent at c*, filtered at 3 c*"
    v = sh.Vector.load(tmp_path / "demo" / "vector")
    assert v.position == "mean" and abs(v.calibration["value"] - 1.0) <= 0.05 and v.coeff == v.calibration["c"]
    pairs = read_pairs(tmp_path / "demo" / "pairs.jsonl")
    assert len(pairs) == 16 and all(p.dose["alpha"] == 1.0 for p in pairs)
    with pytest.raises(sh.SteerhealError, match="exists and is not empty"):
        run(RunArgs(out=tmp_path / "demo"))


def test_run_on_a_tiny_model_with_loosened_filters(tmp_path):
    table = run(RunArgs(model="tiny:qwen3", out=tmp_path / "demo", alphas=(1.0,), max_new_tokens=6, loose_filters=True))
    assert table["kept"].to_list() == [None, 1.0]
    assert sh.Vector.load(tmp_path / "demo" / "vector").meta["n_pos"] == 24


def test_extract_and_bad_model_spec(tmp_path):
    v = extract(ExtractArgs(out=tmp_path / "v", model="tiny:gpt2", layers=(0, 3)))
    assert extract(ExtractArgs(out=tmp_path / "t")).fingerprint.name == "toyworld-lm"
    assert v.layers == [0, 3] and sh.Vector.load(tmp_path / "v").layers == [0, 3]
    with pytest.raises(sh.SteerhealError, match="unknown tiny arch"):
        extract(ExtractArgs(out=tmp_path / "w", model="tiny:bert"))
    assert len(neutral_prompts()) == 40


def test_cli_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "steerheal.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "run" in out.stdout and "extract" in out.stdout
