"""steerheal's logging: quiet as a library, informative as a program.

Imported as a library, steerheal shows its warnings (a precision mismatch, a file made for another model,
loosened filters) and nothing else: INFO lines and progress bars stay off until `steerheal.verbose()` turns
them on, which the CLI and the `just` recipes do. The gate sits where steerheal emits a record, not on
loguru's handlers, so a user's own loguru configuration is left exactly as they set it, and no warning can
be hidden by it (a blanket `logger.disable("steerheal")` would hide warnings too).

bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is imported on a
CPU with AVX512-BF16 and without the optional `kernels` package: advice about a faster kernel, not a fault.
steerheal's own imports of peft and bitsandbytes run inside `quiet_bitsandbytes()`, which raises that
library's logger to ERROR for the duration of the import only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger as _loguru

from steerheal.boundary import checked
from steerheal.errors import SteerhealError

_VERBOSE = [False]
_DEBUG = [False]


@checked
def verbose(on: bool | str = True) -> None:
    """Show steerheal's INFO lines (what was chosen, stage durations) and progress bars on a terminal;
    `verbose("debug")` adds the DEBUG lines (every filter and heal config in force, per call)."""
    if on not in (True, False, "debug"):
        raise SteerhealError(f"verbose({on!r}): use True, False or 'debug'")
    _VERBOSE[0] = bool(on)
    _DEBUG[0] = on == "debug"


def is_verbose() -> bool:
    return _VERBOSE[0]


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's `disable` for a `progress` argument: True/False as asked; None follows `verbose()`, and then tqdm
    itself hides the bar where stderr is not a terminal (no carriage-return spam in CI logs)."""
    if progress is not None:
        return not progress
    return None if _VERBOSE[0] else True


class _Logger:
    """loguru's logger with INFO and DEBUG gated by `verbose()`; WARNING and above always pass through."""

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        if _DEBUG[0]:
            _loguru.opt(depth=1).debug(message, *args, **kwargs)

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        if _VERBOSE[0]:
            _loguru.opt(depth=1).info(message, *args, **kwargs)

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        _loguru.opt(depth=1).warning(message, *args, **kwargs)

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        _loguru.opt(depth=1).error(message, *args, **kwargs)


logger = _Logger()


@contextmanager
def stage(name: str, times: dict[str, float] | None = None) -> Iterator[None]:
    """Log one INFO line with the wall time of a stage when it ends (a progress bar's summary where there is no
    terminal to draw one on), and add it to `times[name]` when given."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if times is not None:
        times[name] = times.get(name, 0.0) + seconds
    if _VERBOSE[0]:
        _loguru.opt(depth=2).info(f"{name}: {seconds:.1f} s")


@contextmanager
def quiet_bitsandbytes() -> Iterator[None]:
    """bitsandbytes' logger at ERROR while steerheal imports peft or bitsandbytes (see the module docstring)."""
    library = logging.getLogger("bitsandbytes")
    level = library.level
    library.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        library.setLevel(level)
