"""Atomic writes, JSON metadata and provenance: nothing a user made is lost to a half-written file."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import tempfile
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from steerheal.errors import SteerhealError


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error(err: OSError, path: Path, doing: str) -> SteerhealError:
    """An OSError met while `doing` something to `path`, as a SteerhealError naming the path and the fix."""
    fixes = {
        errno.ENOSPC: "the disk is full: free space there (or pass --runs-dir on another disk), then --resume",
        errno.EDQUOT: "the disk quota is used up: free space there (or pass --runs-dir elsewhere), then --resume",
        errno.EROFS: "the file system is read-only: pass --runs-dir (or an output folder) on a writable disk",
        errno.EACCES: "permission denied: pass a folder you can write to, or fix its permissions",
        errno.EPERM: "permission denied: pass a folder you can write to, or fix its permissions",
        errno.ENOTDIR: "a part of that path is a file, not a folder: pass another path",
        errno.EEXIST: "a file of that name is in the way: move it or pass another path",
    }
    fix = fixes.get(err.errno, "check the path and the disk")
    return SteerhealError(f"could not {doing} {path}: {err.strerror or err}; {fix}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`. The file gets the
    permissions a plain `open` would give it (0666 less the umask), not mkstemp's owner-only 0600; an OS
    error (a full disk, a read-only folder) is a SteerhealError naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise os_error(err, path, "write") from err
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise os_error(err, path, "write") from err
        raise


def check_output_folder(directory: Path, what: str, previous: str | None, overwrite: bool) -> None:
    """An output folder may be missing, empty, or hold a previous output of the same kind (its file `previous`);
    anything else is refused unless `overwrite`, so nothing of the user's is replaced silently."""
    if directory.exists() and not directory.is_dir():
        raise SteerhealError(f"{what} {directory}: is a file, not a folder; pass a folder (it is created if missing)")
    if not directory.is_dir() or not any(directory.iterdir()) or overwrite:
        return
    if previous is not None and (directory / previous).is_file():
        return
    kind = f"a previous export (no {previous})" if previous else "empty"
    raise SteerhealError(
        f"{what} {directory}: the folder is not empty and is not {kind}; pass an empty or new folder, or add "
        "--overwrite to write into it anyway (files of the same names are replaced, others are kept)"
    )


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline; NaN and inf are refused (they are not JSON)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors bytes written atomically (`atomic_write_bytes`); the files steerheal writes are small."""
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def load_safetensors(path: Path, what: str, missing: str) -> dict[str, torch.Tensor]:
    """The tensors of `path`; a missing file (`missing` says why it may be) and a corrupted or truncated one
    are errors naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SteerhealError(f"{what}: {path} is missing ({missing})")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise SteerhealError(f"{what}: {path} is corrupted or truncated ({err}); save it again") from err


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object, with errors that name the file and what it should have been."""
    if not path.is_file():
        raise SteerhealError(f"{what}: {path} does not exist")
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SteerhealError(f"{what}: {path} is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(obj, dict):
        raise SteerhealError(f"{what}: {path} holds a {type(obj).__name__}, expected a JSON object")
    return obj


def read_tensor_folder(
    directory: Path, meta_file: str, tensor_file: str, format_version: int, what: str, saver: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a folder that `saver` wrote: a JSON and a safetensors file. A missing folder or
    file, invalid JSON, an unknown format_version and a corrupted or truncated safetensors file are errors
    naming the file."""
    if not directory.is_dir():
        raise SteerhealError(f"{what}: no such folder (expected {meta_file} and {tensor_file} from {saver})")
    meta = read_json(directory / meta_file, what)
    version = meta.get("format_version")
    if version != format_version:
        raise SteerhealError(
            f"{what}: format_version {version!r} is not one this steerheal reads ({format_version}); "
            "re-save it with a matching steerheal version"
        )
    return meta, load_safetensors(directory / tensor_file, what, "it was not saved completely")


def check_finite(values: dict[str, torch.Tensor] | dict[str, float], what: str) -> None:
    """Refuse NaN or inf, naming the first offending entry."""
    for key, value in values.items():
        finite = torch.isfinite(value).all().item() if isinstance(value, torch.Tensor) else math.isfinite(value)
        if not finite:
            raise SteerhealError(f"{what}: entry {key!r} contains NaN or inf; the file is damaged")


CODE = Path(__file__).resolve().parent
"""steerheal's own folder: the checkout (or installed package) the provenance fields describe."""


def _git(*args: str) -> str | None:
    """git's output in the folder of this code, or None when it is not a checkout (an installed wheel)."""
    try:
        out = subprocess.run(["git", *args], cwd=CODE, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@cache
def git_commit() -> str | None:
    """The commit of the steerheal checkout this code runs from, when it runs from one."""
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


@cache
def git_dirty() -> bool | None:
    """Whether steerheal's own tracked files differ from `git_commit()` (a result made by uncommitted code is not
    reproduced by checking out the commit); None outside a checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return None if out is None or git_commit() is None else bool(out.strip())


def steerheal_version() -> str:
    return metadata.version("steerheal")


def provenance() -> dict[str, str | bool | None]:
    """What every saved file records about the code that wrote it."""
    return {"steerheal_version": steerheal_version(), "git_commit": git_commit(), "git_dirty": git_dirty()}


def defined(value: Any) -> Any:
    """`value` with every non-finite float as None (a score of no text, an infinite perplexity): undefined reads
    as undefined, and the result is valid JSON."""
    if isinstance(value, dict):
        return {k: defined(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [defined(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
