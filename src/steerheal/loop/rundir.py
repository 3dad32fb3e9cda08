"""The run directory: config, environment, the event log, and one folder per round with its manifest last.

    runs/<name>/steerheal-run.json (the marker: only such a folder is ever replaced)   run.lock (while written)
                config.json   env.json   events.jsonl
                round_00/ vector.safetensors vector.json pairs.jsonl adapter/ metrics.json samples.jsonl
                          manifest.json   (written last and atomically: a round exists only when it does)
                stopped.json (why the run ended)   report.md report.html trajectory.png

Every event carries the attempt that wrote it (attempt 1 is the first `run`, each `--resume` adds one), so
a round started by a killed attempt and replayed by the next is never counted twice: a round's manifest
names the attempt that completed it. Events are appended and fsynced line by line. A round's manifest also
holds the stop decision taken after it, so a kill between the manifest and stopped.json loses nothing.

Under a multi-process launch only rank 0 writes (`writes`); the other ranks hold a `RunDir.follower` whose
writes do nothing, and read what rank 0 wrote. env.json records the world size and every rank's process.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, os_error, provenance, read_json
from steerheal.loop.lock import LOCK

CONFIG, ENV, EVENTS, MANIFEST, STOP = "config.json", "env.json", "events.jsonl", "manifest.json", "stopped.json"
MARKER = "steerheal-run.json"
ROUND = re.compile(r"round_(\d+)")


def _entries(root: Path) -> list[Path]:
    """What a run folder holds besides its lock."""
    return [p for p in root.iterdir() if p.name != LOCK] if root.is_dir() else []


def prepare(root: Path, resume: bool, overwrite: bool) -> bool:
    """Check the run folder's place before anything is written, and create it (True when this call did).
    A folder that is not a steerheal run is never written into, let alone replaced."""
    runs_dir = root.parent
    if runs_dir.exists() and not runs_dir.is_dir():
        raise SteerhealError(f"--runs-dir {runs_dir} is a file, not a folder; pass a folder (it is created if missing)")
    if root.exists() and not root.is_dir():
        raise SteerhealError(f"run {root} is a file, not a run folder; pass another --name or move the file")
    if resume:
        if not (root / CONFIG).is_file():
            raise SteerhealError(f"cannot resume {root}: it has no {CONFIG} (start the run without --resume)")
        return False
    if _entries(root) and not (root / MARKER).is_file():
        if (root / CONFIG).is_file() and (root / ENV).is_file():
            fix = "an older steerheal run: --resume it once (which marks it), or delete it yourself"
        else:
            fix = "pick another --name, or move or delete that folder yourself"
        raise SteerhealError(
            f"{root} exists, is not empty and is not a steerheal run (no {MARKER}); steerheal replaces only its own "
            f"runs, even with --overwrite: {fix}"
        )
    if _entries(root) and not overwrite:
        raise SteerhealError(
            f"run directory {root} exists and is not empty; pass --overwrite to replace it or --resume to continue it"
        )
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, root, "create the run folder") from err
    return created


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "steering-vectors", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


SHARD_RULE = (
    "batch b of every batch list (the length-sorted sampling plan of all prompts; calibration's and the KL "
    "tail's scoring batches) is computed by rank b % world_size, with the generators of the global prompt indices"
)


class RunDir:
    def __init__(self, root: Path, attempt: int, writes: bool = True) -> None:
        self.root, self.attempt, self.writes = root, attempt, writes
        self.processes: dict[str, Any] | None = None

    @classmethod
    def follower(cls, root: Path) -> RunDir:
        """The run as a rank other than 0 sees it: read what rank 0 writes, write nothing."""
        return cls(root, len(_attempts(root)), writes=False)

    @classmethod
    def create(
        cls, root: Path, config: dict[str, Any], seed: int, overwrite: bool, processes: dict[str, Any] | None = None
    ) -> RunDir:
        """A new run in a folder `prepare` accepted; a previous run there is removed only with `overwrite`
        (the caller holds the run lock, which stays)."""
        prepare(root, resume=False, overwrite=overwrite)
        entries = _entries(root)
        if entries:
            if not overwrite or not (root / MARKER).is_file():
                raise SteerhealError(f"run directory {root} changed while this run started; run again")
            try:
                for entry in entries:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            except OSError as err:
                raise os_error(err, root, "clear the previous run in") from err
        atomic_write_json(root / MARKER, {"kind": "steerheal.run", "format_version": 1, **provenance()})
        atomic_write_json(root / CONFIG, config)
        run = cls(root, 1)
        run.processes = processes
        run._record_attempt(seed)
        return run

    @classmethod
    def resume(
        cls,
        root: Path,
        config: dict[str, Any],
        seed: int,
        normalise: Callable[[dict[str, Any]], dict[str, Any]],
        processes: dict[str, Any] | None = None,
    ) -> RunDir:
        """An existing run, continued by a new attempt. Its stored config, normalised (`normalise`: defaults
        filled in for fields it predates, options that change no result dropped), must equal `config`
        normalised the same way."""
        prepare(root, resume=True, overwrite=False)
        stored = normalise(read_json(root / CONFIG, f"run {root}"))
        config = normalise(config)
        if stored != config:
            keys = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise SteerhealError(
                f"cannot resume {root} with another configuration (differs in {keys}); resume with the same "
                "options it was started with, or start a new run"
            )
        run = cls(root, len(_attempts(root)) + 1)
        run.processes = processes
        if not (root / MARKER).is_file():
            atomic_write_json(root / MARKER, {"kind": "steerheal.run", "format_version": 1, **provenance()})
        run._trim_cut_event()
        run._record_attempt(seed)
        return run

    def _trim_cut_event(self) -> None:
        """Drop a last event line a kill cut short, so this attempt's events start on a line of their own."""
        path = self.root / EVENTS
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                path.write_bytes(data[: data.rfind(b"\n") + 1])

    def _record_attempt(self, seed: int) -> None:
        processes = self.processes or {"world_size": 1, "ranks": []}
        if processes["world_size"] > 1:
            processes = {**processes, "shard": SHARD_RULE}
        env = {"attempts": _attempts(self.root)}
        env["attempts"].append(
            {
                "attempt": self.attempt,
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "seed": seed,
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
                **processes,
                **_versions(),
                **provenance(),
            }
        )
        atomic_write_json(self.root / ENV, env)

    # ------------------------------------------------------------------ events
    def log(self, event: dict[str, Any]) -> None:
        """Append one event (with the attempt and a timestamp), flushed and fsynced (by the writing rank)."""
        if not self.writes:
            return
        record = {"attempt": self.attempt, "time": datetime.datetime.now(datetime.UTC).isoformat(), **event}
        line = json.dumps(record, sort_keys=True, default=float) + "\n"
        try:
            with open(self.root / EVENTS, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise os_error(err, self.root / EVENTS, "append to") from err

    def events(self) -> list[dict[str, Any]]:
        path = self.root / EVENTS
        if not path.exists():
            return []
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(path.read_text(encoding="utf-8").splitlines()):
                    continue  # a last line cut by a kill: the event never completed
                raise SteerhealError(f"{path}:{n} is not valid JSON; the event log is damaged") from None
        return out

    # ------------------------------------------------------------------ rounds
    def round_dir(self, k: int) -> Path:
        return self.root / f"round_{k:02d}"

    def complete_rounds(self) -> list[int]:
        """Rounds whose manifest exists, in order; they must be 0, 1, ... without gaps. Another folder with a
        manifest under a round_* name (a copy such as round_backup/) is an error naming it."""
        done = []
        for path in self.root.glob(f"round_*/{MANIFEST}"):
            match = ROUND.fullmatch(path.parent.name)
            if match is None:
                raise SteerhealError(
                    f"run {self.root}: {path} is not in a round folder (round_00, round_01, ...); move "
                    f"{path.parent.name}/ out of the run directory"
                )
            done.append(int(match.group(1)))
        done.sort()
        if done != list(range(len(done))):
            raise SteerhealError(f"run {self.root}: complete rounds {done} have a gap; the run directory is damaged")
        return done

    def write_manifest(self, k: int, manifest: dict[str, Any]) -> None:
        if not self.writes:
            return
        atomic_write_json(self.round_dir(k) / MANIFEST, {"round": k, "attempt": self.attempt, **manifest})

    def write_stop(self, reason: str, last_round: int) -> None:
        """The run is over: why, and the last complete round it leaves (stopped.json, then a `stopped` event)."""
        if not self.writes:
            return
        atomic_write_json(self.root / STOP, {"reason": reason, "last_round": last_round, "attempt": self.attempt})
        self.log({"event": "stopped", "round": last_round, "reason": reason})

    def stop_record(self) -> dict[str, Any] | None:
        path = self.root / STOP
        return read_json(path, f"run {self.root}") if path.exists() else None

    def manifest(self, k: int) -> dict[str, Any]:
        return read_json(self.round_dir(k) / MANIFEST, f"round {k} of {self.root}")


def _attempts(root: Path) -> list[dict[str, Any]]:
    """env.json's attempts (none when it does not exist yet); a file of another shape is an error naming it."""
    path = root / ENV
    if not path.exists():
        return []
    attempts = read_json(path, f"run {root}").get("attempts")
    if not isinstance(attempts, list) or not all(isinstance(a, dict) for a in attempts):
        raise SteerhealError(
            f'run {root}: {path} must hold {{"attempts": [ {{...}}, ... ]}} (one object per attempt), got '
            f"attempts={attempts!r:.80}; the file is damaged"
        )
    return attempts


def open_existing(root: Path) -> RunDir:
    """A finished or interrupted run, read-only (report, export, load_run)."""
    if not (root / CONFIG).is_file():
        raise SteerhealError(f"{root} is not a steerheal run directory (no {CONFIG})")
    return RunDir(root, len(_attempts(root)))
