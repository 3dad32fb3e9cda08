"""The processes of one run: rank, world size, each rank's share of a list, and exchange between ranks.

One process (no launcher) is world size 1, rank 0, and nothing here communicates. Under a launcher
(`torchrun --nproc_per_node N -m steerheal ...` or `accelerate launch --multi_gpu --num_processes N -m steerheal
...`, which set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), `init()` builds accelerate's
`PartialState` with `cpu=True` when CUDA is absent, so the ranks join one gloo process group (without
`cpu=True` accelerate only joins a group for a GPU backend, and each rank would think it is alone).

Every collective has a timeout (`STEERHEAL_DIST_TIMEOUT` seconds, default 300; gloo's own default is 30 minutes),
and a collective that fails (a rank was killed, or hangs past the timeout) raises `RankLost`, a SteerhealError:
the loop records the round as failed and the complete rounds stand (`--resume` continues).

Sharing work: item `i` of a list of batches goes to rank `i % world_size` (`mine`); what each rank computed is
all-gathered and put back in list order (`gather_indexed`), so every rank ends with the whole result, equal to
what one process computes when each batch is computed as one process would.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor

from steerheal.errors import SteerhealError

TIMEOUT_ENV = "STEERHEAL_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
T = TypeVar("T")


class RankLost(SteerhealError):
    """A collective failed: another rank died, or did not answer within the timeout."""


def launched() -> bool:
    """Whether a launcher started more than one process (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def timeout_seconds() -> float:
    """The collectives' timeout: STEERHEAL_DIST_TIMEOUT seconds (default 300)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise SteerhealError(
            f"{TIMEOUT_ENV}={raw!r}: must be a positive number of seconds (default {DEFAULT_TIMEOUT:g})"
        )
    return value


def init() -> None:
    """Join the launcher's process group (no-op in one process or when already joined): accelerate's PartialState,
    cpu=True (gloo) when CUDA is absent, with the timeout of `timeout_seconds`."""
    if not launched() or active():
        return
    timeout = datetime.timedelta(seconds=timeout_seconds())
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)
    expected = int(os.environ["WORLD_SIZE"])
    if state.num_processes != expected or not active():
        raise SteerhealError(
            f"WORLD_SIZE={expected} but accelerate joined {state.num_processes} process(es); launch with "
            "`torchrun --nproc_per_node N -m steerheal ...` or `accelerate launch --multi_gpu --num_processes N -m "
            "steerheal ...`"
        )


def mine(n: int) -> list[int]:
    """The indices of n items (batches) this rank computes: i % world_size == rank."""
    return list(range(rank(), n, world_size()))


def _lost(what: str, err: BaseException) -> RankLost:
    return RankLost(
        f"rank {rank()} of {world_size()}: {what} failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
        f"another rank died or did not answer within {timeout_seconds():g} s ({TIMEOUT_ENV}). Complete rounds are "
        "kept; relaunch with --resume"
    )


def all_gather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order ([obj] in one process)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    try:
        torch.distributed.all_gather_object(out, obj)
    except (RuntimeError, ConnectionError) as err:
        raise _lost("all_gather_object", err) from err
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank."""
    if world_size() == 1:
        return obj
    box: list[Any] = [obj]
    try:
        torch.distributed.broadcast_object_list(box, src=src)
    except (RuntimeError, ConnectionError) as err:
        raise _lost("broadcast_object", err) from err
    return box[0]


def gather_indexed(local: dict[int, T], n: int) -> list[T]:
    """The items 0..n-1, each computed by one rank (`local`: this rank's {index: item}), on every rank."""
    merged: dict[int, T] = {}
    for part in all_gather_object(local):
        merged.update(part)
    missing = sorted(set(range(n)) - set(merged))
    if missing:
        raise SteerhealError(f"gather_indexed: no rank computed items {missing[:10]} of {n}")
    return [merged[i] for i in range(n)]


@torch.no_grad()
def broadcast_tensors(tensors: Sequence[Tensor], src: int = 0) -> float:
    """Overwrite `tensors` in place with rank `src`'s; returns the largest absolute difference this rank's
    tensors had from them before (0.0 on `src` and in one process)."""
    if world_size() == 1:
        return 0.0
    largest = 0.0
    try:
        for t in tensors:
            theirs = t.detach().clone()
            torch.distributed.broadcast(theirs, src=src)
            if theirs.numel():
                largest = max(largest, float((theirs.float() - t.detach().float()).abs().max()))
            t.copy_(theirs)
    except (RuntimeError, ConnectionError) as err:
        raise _lost("broadcast", err) from err
    return largest


def barrier() -> None:
    if world_size() == 1:
        return
    try:
        torch.distributed.barrier()
    except (RuntimeError, ConnectionError) as err:
        raise _lost("barrier", err) from err


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (it writes what the others then read), the other ranks after it."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def processes() -> dict[str, Any]:
    """The world size and each rank's process (rank, local rank, host, pid), gathered on every rank."""
    me = {"rank": rank(), "local_rank": int(os.environ.get("LOCAL_RANK", "0")), "host": socket.gethostname()}
    me["pid"] = os.getpid()
    return {"world_size": world_size(), "ranks": all_gather_object(me)}
