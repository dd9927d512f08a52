"""What every shard task returns, and the rules they share: a shard that exists is not recomputed,
and model compute takes a slot of the `gpu` concurrency limit when one is configured."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from storage.io import exists, write_table

_model_locks: dict[int, threading.Lock] = {}
_registry_lock = threading.Lock()


@dataclass(frozen=True)
class ShardResult:
    path: str
    computed: bool
    forward_passes: int = 0
    rows: int = 0


def cached_shard(path: str, compute: Callable[[], tuple[pa.Table, int]]) -> ShardResult:
    """Return the shard at `path`, computing and writing it only when it does not exist yet.

    `compute` returns the table and the number of model forward passes it took. When another run
    wrote the same shard meanwhile, its file is kept, unchanged (first writer wins): a reader that
    has listed a shard never finds it replaced.
    """
    if exists(path):
        return ShardResult(path, computed=False)
    table, passes = compute()
    write_table(path, table, exclusive=True)
    return ShardResult(path, computed=True, forward_passes=passes, rows=table.num_rows)


GPU_LIMIT_ENV = "WDYS_GPU_LIMIT"


@contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold a slot of the Prefect global concurrency limit named by $WDYS_GPU_LIMIT (deployments set
    it to `gpu`), strictly: a limit that does not exist is an error, not a warning. Local runs
    without a server leave the variable unset and take no slot."""
    name = os.environ.get(GPU_LIMIT_ENV)
    if not name:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1, strict=True):
        yield


@contextmanager
def exclusive(model: object) -> Iterator[Callable[[], int]]:
    """Run one shard at a time on a shared model, inside a GPU slot; yields a function giving the
    forward passes spent so far. A model declaring `concurrent_shards` (a remote describer: it bounds
    its own requests and uses no local GPU) is shared without a lock or a slot and counts per thread,
    so that shards overlap."""
    if getattr(model, "concurrent_shards", False):
        here = model.passes_in_this_thread  # type: ignore[attr-defined]
        start = here()
        yield lambda: here() - start
        return
    with _registry_lock:
        lock = _model_locks.setdefault(id(model), threading.Lock())
    with lock, gpu_slot():
        start = model.forward_passes  # type: ignore[attr-defined]
        yield lambda: model.forward_passes - start  # type: ignore[attr-defined]
