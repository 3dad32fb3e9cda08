"""Atomic writes, JSON metadata and provenance: nothing a user made is lost to a half-written file."""

from __future__ import annotations

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


@cache
def git_commit() -> str | None:
    """The commit of the steerheal checkout this code runs from, when it runs from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def steerheal_version() -> str:
    return metadata.version("steerheal")


def provenance() -> dict[str, str | None]:
    """What every saved file records about the code that wrote it."""
    return {"steerheal_version": steerheal_version(), "git_commit": git_commit()}
