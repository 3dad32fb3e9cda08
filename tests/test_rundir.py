"""Run-directory safety without training: names, the marker, the lock, validation before the model loads,
resume rules, OS errors, Ctrl-C, file modes, export folders. CLI cases run in-process through `cli.main`."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import steerheal as sh
from steerheal import files
from steerheal.cli import main
from steerheal.loop import rounds
from steerheal.loop.checks import validate
from steerheal.loop.lock import LOCK, RunLock, writes_run
from steerheal.loop.rounds import run
from steerheal.loop.runconfig import RunConfig, compared, preset
from steerheal.loop.rundir import MARKER, RunDir, open_existing

TINY = ["--preset", "fast-dev-run", "--model", "tiny:llama"]


class Loaded(Exception):
    """Raised in place of loading the model: the run got past every check."""


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(rounds, "open_model", refuse)


def _config(tmp: Path, name: str = "r", **kw) -> RunConfig:
    return dataclasses.replace(preset("fast-dev-run"), runs_dir=tmp, name=name, **kw)


def _error(logs: list[str]) -> str:
    return next(m for m in logs if m.startswith("ERROR"))


def _fails(args: list[str], logs: list[str]) -> str:
    """The error `steerheal ARGS` reports (status 2, no traceback)."""
    logs.clear()
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    return _error(logs)


def test_run_names_are_plain_names_and_overwrite_replaces_only_steerheal_runs(tmp_path, logs, no_model):
    runs = tmp_path / "runs"
    (runs / "keep").mkdir(parents=True)
    (runs / "keep" / "data.txt").write_text("mine")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "data.txt").write_text("mine")
    for name in ["", ".", "..", "../victim", "a/b", str(tmp_path / "victim")]:
        message = _fails(["run", *TINY, "--runs-dir", str(runs), "--name", name, "--overwrite"], logs)
        assert f"--name {name!r}: a run name is one plain folder name" in message
    # a folder that is not a steerheal run is never replaced, even with --overwrite
    message = _fails(["run", *TINY, "--runs-dir", str(runs), "--name", "keep", "--overwrite"], logs)
    assert "is not a steerheal run (no steerheal-run.json)" in message
    assert (runs / "keep" / "data.txt").read_text() == "mine" and (tmp_path / "victim" / "data.txt").is_file()
    # a steerheal run is replaced only after every option was checked
    old = RunDir.create(runs / "old", {"a": 1}, 0, overwrite=False)
    message = _fails(["run", *TINY, "--runs-dir", str(runs), "--name", "old", "--overwrite", "--n-pairs", "0"], logs)
    assert "--n-pairs 0: must be at least 1" in message and (old.root / "config.json").is_file()
    with pytest.raises(Loaded):
        run(_config(runs, "old"), overwrite=True)
    assert json.loads((old.root / "config.json").read_text())["name"] == "old" and (old.root / MARKER).is_file()
    assert not (old.root / LOCK).exists(), "the lock is released when the run ends, however it ends"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dose.target-kl", "-1"], "--dose.target-kl -1.0: must be above 0"),
        (["--dose.target-kl", "nan"], "--dose.target-kl nan: must be a finite number"),
        (["--n-pairs", "0"], "--n-pairs 0: must be at least 1"),
        (["--stop.max-rounds", "0"], "--stop.max-rounds 0: must be at least 1"),
        (["--concept.layers", "99"], "--concept.layers 99: is not a block of tiny:llama (valid: 0..3)"),
        (
            ["--model", "toyworld", "--concept.layers", "1", "4"],
            "--concept.layers 4: is not a block of toyworld (valid: 0..3)",
        ),
        (["--threads", "0"], "--threads 0: must be at least 1"),
        (["--sampling.top-p", "1.5"], "--sampling.top-p 1.5: must lie in (0, 1]"),
        (["--stop.max-kl-tail", "inf"], "--stop.max-kl-tail inf: must be a finite number"),
        (["--concept.source", "persona", "--concept.persona-file", "no.json"], "--concept.persona-file 'no.json'"),
        (["--verify.corpus", "no/such/folder"], "--verify.corpus 'no/such/folder': no such folder"),
        (["--device", "cuda:7"], "--device cuda:7"),
    ],
)
def test_every_option_is_checked_before_the_model_loads_and_the_folder_exists(tmp_path, logs, no_model, args, expected):
    if args[0] == "--model":
        args = ["--preset", "fast-dev-run", *args]  # the preset's scale, toyworld's config.json
    message = _fails(["run", *(TINY if args[0] != "--preset" else []), *args, "--runs-dir", str(tmp_path)], logs)
    assert expected in message
    assert not any(tmp_path.iterdir()), "nothing was written"


def test_device_runs_dir_and_disk_errors_name_the_path_and_the_fix(tmp_path, logs, monkeypatch, no_model):
    if not torch.cuda.is_available():
        message = _fails(["run", *TINY, "--device", "cuda", "--runs-dir", str(tmp_path)], logs)
        assert "--device cuda: torch finds no CUDA device" in message and "--device cpu" in message
    (tmp_path / "file").write_text("x")
    message = _fails(["run", *TINY, "--runs-dir", str(tmp_path / "file")], logs)
    assert f"--runs-dir {tmp_path / 'file'}: is a file" in message
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro-run":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    message = _fails(["run", *TINY, "--runs-dir", str(tmp_path), "--name", "ro-run"], logs)
    assert f"could not create the run folder {tmp_path / 'ro-run'}: Permission denied" in message
    monkeypatch.setattr(Path, "mkdir", real_mkdir)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    message = _fails(["run", *TINY, "--runs-dir", str(tmp_path), "--name", "full"], logs)
    assert "No space left on device; the disk is full" in message and str(tmp_path / "full") in message
    monkeypatch.undo()
    assert not (tmp_path / "full" / LOCK).exists()


def test_the_run_lock_names_its_holder_and_takes_over_a_stale_one(tmp_path, logs, no_model):
    root = tmp_path / "r"
    RunDir.create(root, _config(tmp_path).to_dict(), 0, overwrite=False)
    host = socket.gethostname()
    (root / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": host, "started": "then"}))
    with pytest.raises(sh.SteerhealError, match=f"process {os.getpid()} on this host holds"):
        run(_config(tmp_path), resume=True)
    message = _fails(["run", *TINY, "--runs-dir", str(tmp_path), "--name", "r", "--overwrite"], logs)
    assert "is in use" in message and (root / "config.json").is_file(), "a locked run is not replaced"
    (root / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(sh.SteerhealError, match="process 1 on host elsewhere holds .* delete the lock file"):
        run(_config(tmp_path), resume=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / LOCK).write_text(json.dumps({"pid": dead.pid, "host": host, "started": "then"}))
    with pytest.raises(Loaded):
        run(_config(tmp_path), resume=True)
    assert any("taking over a stale lock" in m for m in logs) and not (root / LOCK).exists()
    with RunLock(root) as lock:
        assert json.loads((root / LOCK).read_text())["pid"] == os.getpid() and lock.held
        with pytest.raises(sh.SteerhealError, match="is in use"):
            RunLock(root).acquire()
    assert not (root / LOCK).exists()
    assert writes_run()
    os.environ["RANK"] = "1"
    try:
        assert not writes_run(), "under a multi-process launch only rank 0 writes the run and takes the lock"
    finally:
        del os.environ["RANK"]


def test_resume_honours_the_stop_in_the_manifest_and_compares_the_normalised_config(tmp_path, no_model):
    config = _config(tmp_path)
    stored = config.to_dict()
    del stored["threads"], stored["heal"]["chunk"]  # a config.json from before these fields existed
    run_dir = RunDir.create(tmp_path / "r", stored, 0, overwrite=False)
    with pytest.raises(Loaded):  # threads changes no result: not compared
        run(dataclasses.replace(config, threads=3), resume=True)
    with pytest.raises(sh.SteerhealError, match=r"another configuration \(differs in \['seed'\]\)"):
        run(dataclasses.replace(config, seed=1), resume=True)
    assert compared(config.to_dict()) == compared(stored) and "threads" not in compared(stored)
    # killed after round 0's manifest (which decided to stop) and before stopped.json: no round 1 is trained
    run_dir.round_dir(0).mkdir()
    run_dir.write_manifest(0, {"stop": "trait gain: retain rose +0.001", "coherence_broken": False})
    result = run(config, resume=True)
    assert result.stop_reason == "trait gain: retain rose +0.001" and result.rounds == [0]
    assert json.loads((run_dir.root / "stopped.json").read_text())["last_round"] == 0
    assert run(config, resume=True).metrics == []


def test_damaged_run_files_are_errors_naming_them(tmp_path):
    run_dir = RunDir.create(tmp_path / "r", {"a": 1}, 0, overwrite=False)
    (run_dir.root / "round_backup").mkdir()
    (run_dir.root / "round_backup" / "manifest.json").write_text("{}")
    with pytest.raises(sh.SteerhealError, match="round_backup/manifest.json is not in a round folder"):
        open_existing(run_dir.root).complete_rounds()
    (run_dir.root / "env.json").write_text('{"attempts": 3}')
    with pytest.raises(sh.SteerhealError, match="env.json must hold"):
        open_existing(run_dir.root)
    (run_dir.root / "config.json").write_text('{"heal": {"lr": "fast"}}')
    with pytest.raises(sh.SteerhealError, match="config.json"):
        compared(json.loads((run_dir.root / "config.json").read_text()))


def test_ctrl_c_prints_where_the_run_stopped_and_the_resume_command(tmp_path, capsys, monkeypatch):
    def interrupted(self, k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rounds.Loop, "round", interrupted)
    with pytest.raises(SystemExit) as info:
        main(["run", *TINY, "--runs-dir", str(tmp_path), "--name", "c", "--overwrite"])
    assert info.value.code == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"steerheal: interrupted in round 0 of {tmp_path / 'c'} (complete rounds: []); continue with: steerheal "
        f"run --preset fast-dev-run --model tiny:llama --runs-dir {tmp_path} --name c --resume"
    )
    assert [e["event"] for e in open_existing(tmp_path / "c").events()][-1] == "interrupted"
    assert not (tmp_path / "c" / LOCK).exists()


def test_atomic_writes_honour_the_umask_and_export_folders_are_checked(tmp_path):
    old = os.umask(0o022)
    try:
        files.atomic_write_json(tmp_path / "a.json", {"a": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        files.atomic_write_bytes(tmp_path / "b.bin", b"x")
        assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(sh.SteerhealError, match="not empty and is not a previous export"):
        files.check_output_folder(tmp_path / "out", "--peft", "steerheal_export.json", overwrite=False)
    files.check_output_folder(tmp_path / "out", "--peft", "steerheal_export.json", overwrite=True)
    (tmp_path / "out" / "steerheal_export.json").write_text("{}")
    files.check_output_folder(tmp_path / "out", "--peft", "steerheal_export.json", overwrite=False)
    with pytest.raises(sh.SteerhealError, match="is a file"):
        files.check_output_folder(tmp_path / "a.json", "--merged", None, overwrite=True)


def test_the_toyworld_corpus_is_written_atomically(tmp_path, monkeypatch):
    from steerheal.loop.concepts import _write_atomically
    from steerheal.toyworld import world

    calls = []
    real = world._write

    def killed(path, texts):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.EIO, "killed mid-write")
        real(path, texts)

    monkeypatch.setattr(world, "_write", killed)
    with pytest.raises(sh.SteerhealError, match="killed mid-write"):
        _write_atomically(tmp_path / "corpus", lambda tmp: world.write_corpus(tmp))
    assert not (tmp_path / "corpus").exists(), "no partial corpus for a resumed run to use"
    monkeypatch.setattr(world, "_write", real)
    (tmp_path / ".corpus.tmp-1").mkdir()  # left by a killed writer
    _write_atomically(tmp_path / "corpus", lambda tmp: world.write_corpus(tmp))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
    assert sh.Corpus.load(tmp_path / "corpus").concepts


def test_threads_default_follows_the_model(tmp_path):
    assert preset("toyworld").torch_threads() == 1 and _config(tmp_path).torch_threads() == 1
    assert dataclasses.replace(preset("real"), threads=None).torch_threads() == max(1, min(os.cpu_count() or 1, 8))
    assert dataclasses.replace(preset("real"), threads=2).torch_threads() == 2
    validate(_config(tmp_path, threads=2))


def test_provenance_says_whether_the_code_differs_from_its_commit(tmp_path, monkeypatch):
    """A run made by uncommitted code records git_dirty: checking out git_commit would not reproduce it. Untracked
    files (a run folder, a scratch script) do not count; files outside steerheal's own folder do not either."""
    repo, code = tmp_path / "repo", tmp_path / "repo" / "src" / "steerheal"
    code.mkdir(parents=True)
    (code / "module.py").write_text("x = 1\n")
    (repo / "notes.md").write_text("notes\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)

    def state() -> tuple[str | None, bool | None]:
        files.git_commit.cache_clear()
        files.git_dirty.cache_clear()
        return files.git_commit(), files.git_dirty()

    monkeypatch.setattr(files, "CODE", code)
    try:
        commit, dirty = state()
        assert commit is not None and len(commit) == 40 and dirty is False
        (code / "scratch.py").write_text("y = 2\n")
        (repo / "notes.md").write_text("edited\n")
        assert state() == (commit, False), "untracked files and files outside the package are not the code"
        (code / "module.py").write_text("x = 2\n")
        assert state() == (commit, True)
        monkeypatch.setattr(files, "CODE", tmp_path)
        assert state() == (None, None), "not a checkout (an installed wheel): unknown, not clean"
    finally:
        monkeypatch.undo()
        state()
