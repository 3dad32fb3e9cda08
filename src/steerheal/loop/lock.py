"""The run lock: one process writes a run directory at a time.

The lock is a file in the run directory (`run.lock`) holding the writer's pid, host and start time. It is
created complete or not at all (written to a temporary name, then hard-linked to `run.lock`, which fails when
the lock exists), so a second writer always reads whole contents. A lock whose holder is a dead process on
this host is stale (the writer was killed): it is taken over with a warning. A lock held from another host
cannot be checked from here; the error names the holder and how to clear it.

Only the process that writes the run takes the lock (`writes_run`): under a multi-process launch (torchrun
sets RANK) that is rank 0, and the other ranks neither take nor need it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from steerheal.errors import SteerhealError
from steerheal.files import os_error
from steerheal.log import logger

LOCK = "run.lock"


def writes_run() -> bool:
    """Whether this process writes the run (and takes its lock): rank 0 of a multi-process launch, or the
    only process."""
    return os.environ.get("RANK", "0") == "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


class RunLock:
    """`with RunLock(root):` holds root/run.lock for the block; a live holder is an error naming it."""

    def __init__(self, root: Path) -> None:
        self.root, self.path = root, root / LOCK
        self.held = False
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    def _holder(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _link(self) -> bool:
        """Create the lock with our record, atomically; False when it exists."""
        tmp = self.root / f".{LOCK}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(self.record) + "\n", encoding="utf-8")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            raise os_error(err, self.path, "create the run lock") from err
        return True

    def acquire(self) -> None:
        for _ in range(3):
            if self._link():
                self.held = True
                return
            holder = self._holder()
            if holder is None:
                continue  # released between our attempt and the read: try again
            pid, host = holder.get("pid"), holder.get("host")
            if host == self.record["host"] and isinstance(pid, int) and not _alive(pid):
                logger.warning(
                    f"{self.path}: taking over a stale lock (process {pid} on {host}, started "
                    f"{holder.get('started')}, is gone: it was killed or crashed)"
                )
                self.path.unlink(missing_ok=True)
                continue
            where = "this host" if host == self.record["host"] else f"host {host}"
            raise SteerhealError(
                f"run {self.root} is in use: process {pid} on {where} holds {self.path} (since "
                f"{holder.get('started')}). Wait for it to finish or stop it; if that process is gone (for a lock "
                "from another host steerheal cannot check), delete the lock file and run again"
            )
        raise SteerhealError(f"could not take the run lock {self.path}: other processes keep taking it")

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._holder() == self.record:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
