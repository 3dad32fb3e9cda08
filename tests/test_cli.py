"""The main job (`steerheal run`) and `steerheal extract`, run in-process on tiny models."""

from __future__ import annotations

import subprocess
import sys

import pytest

import steerheal as sh
from steerheal.cli import ExtractArgs, RunArgs, extract, neutral_prompts, run


def test_run_on_toyworld_moves_joy_then_breaks_grammar(tmp_path):
    table = run(RunArgs(out=tmp_path / "demo", strengths=(0.0, 0.5, 4.0), n_eval=16))
    joy, grammar = table["joy rate"].to_list(), table["grammar_ok"].to_list()
    assert joy[1] > joy[0] + 0.2 and grammar[1] >= 0.9 and grammar[2] < 0.5
    assert sh.Vector.load(tmp_path / "demo" / "vector").position == "mean"


def test_run_trains_saves_and_sweeps(tmp_path):
    table = run(RunArgs(model="tiny:qwen3", out=tmp_path / "demo", strengths=(0.0, 0.5, 2.0), max_new_tokens=6))
    assert (tmp_path / "demo" / "steering_sweep.csv").is_file()
    v = sh.Vector.load(tmp_path / "demo" / "vector")
    assert v.position == "prompt_end" and v.meta["n_pos"] == 24
    kl = table["next-token KL mean"].to_list()
    shift = table["projection shift"].to_list()
    assert kl[0] == 0.0 and kl[0] < kl[1] < kl[2], "KL grows with the steering strength"
    assert shift[0] == 0.0 and 0 < shift[1] < shift[2]
    with pytest.raises(sh.SteerhealError, match="exists and is not empty"):
        run(RunArgs(model="tiny:qwen3", out=tmp_path / "demo"))


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
