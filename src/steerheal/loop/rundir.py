"""The run directory: config, environment, the event log, and one folder per round with its manifest last.

    runs/<name>/config.json   env.json   events.jsonl
                round_00/ vector.safetensors vector.json pairs.jsonl adapter/ metrics.json samples.jsonl
                          manifest.json   (written last and atomically: a round exists only when it does)
                stopped.json (why the run ended)   report.md report.html trajectory.png

Every event carries the attempt that wrote it (attempt 1 is the first `run`, each `--resume` adds one), so
a round started by a killed attempt and replayed by the next is never counted twice: a round's manifest
names the attempt that completed it. Events are appended and fsynced line by line.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from steerheal.errors import SteerhealError
from steerheal.files import atomic_write_json, provenance, read_json

CONFIG, ENV, EVENTS, MANIFEST, STOP = "config.json", "env.json", "events.jsonl", "manifest.json", "stopped.json"


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "steering-vectors", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


class RunDir:
    def __init__(self, root: Path, attempt: int) -> None:
        self.root, self.attempt = root, attempt

    @classmethod
    def create(cls, root: Path, config: dict[str, Any], seed: int, overwrite: bool) -> RunDir:
        """A new run folder; an existing non-empty one is refused unless `overwrite`."""
        if root.exists() and any(root.iterdir()):
            if not overwrite:
                raise SteerhealError(
                    f"run directory {root} exists and is not empty; pass --overwrite to replace it or --resume "
                    "to continue it"
                )
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / CONFIG, config)
        run = cls(root, 1)
        run._record_attempt(seed)
        return run

    @classmethod
    def resume(cls, root: Path, config: dict[str, Any], seed: int) -> RunDir:
        """An existing run, continued by a new attempt; its config must be the one it was started with."""
        if not (root / CONFIG).is_file():
            raise SteerhealError(f"cannot resume {root}: it has no {CONFIG} (start the run without --resume)")
        stored = read_json(root / CONFIG, f"run {root}")
        if stored != config:
            keys = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise SteerhealError(
                f"cannot resume {root} with another configuration (differs in {keys}); resume with the same "
                "options it was started with, or start a new run"
            )
        env = read_json(root / ENV, f"run {root}")
        run = cls(root, len(env.get("attempts", [])) + 1)
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
        path = self.root / ENV
        env = read_json(path, f"run {self.root}") if path.exists() else {"attempts": []}
        env["attempts"].append(
            {
                "attempt": self.attempt,
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "seed": seed,
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
                **_versions(),
                **provenance(),
            }
        )
        atomic_write_json(path, env)

    # ------------------------------------------------------------------ events
    def log(self, event: dict[str, Any]) -> None:
        """Append one event (with the attempt and a timestamp), flushed and fsynced."""
        record = {"attempt": self.attempt, "time": datetime.datetime.now(datetime.UTC).isoformat(), **event}
        line = json.dumps(record, sort_keys=True, default=float) + "\n"
        with open(self.root / EVENTS, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

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
        """Rounds whose manifest exists, in order; they must be 0, 1, ... without gaps."""
        done = sorted(int(p.parent.name.split("_")[1]) for p in self.root.glob(f"round_*/{MANIFEST}"))
        if done != list(range(len(done))):
            raise SteerhealError(f"run {self.root}: complete rounds {done} have a gap; the run directory is damaged")
        return done

    def write_manifest(self, k: int, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.round_dir(k) / MANIFEST, {"round": k, "attempt": self.attempt, **manifest})

    def write_stop(self, reason: str, last_round: int) -> None:
        """The run is over: why, and the last complete round it leaves (stopped.json, then a `stopped` event)."""
        atomic_write_json(self.root / STOP, {"reason": reason, "last_round": last_round, "attempt": self.attempt})
        self.log({"event": "stopped", "round": last_round, "reason": reason})

    def stop_record(self) -> dict[str, Any] | None:
        path = self.root / STOP
        return read_json(path, f"run {self.root}") if path.exists() else None

    def manifest(self, k: int) -> dict[str, Any]:
        return read_json(self.round_dir(k) / MANIFEST, f"round {k} of {self.root}")


def open_existing(root: Path) -> RunDir:
    """A finished or interrupted run, read-only (report, export, load_run)."""
    if not (root / CONFIG).is_file():
        raise SteerhealError(f"{root} is not a steerheal run directory (no {CONFIG})")
    env = read_json(root / ENV, f"run {root}") if (root / ENV).exists() else {"attempts": []}
    return RunDir(root, len(env.get("attempts", [])))
