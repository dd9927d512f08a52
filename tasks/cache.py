"""What every shard task returns, and the rules they share: a shard that exists is not recomputed,
a computed shard records where it was computed, and model compute takes a slot of its device's
concurrency limit when limits are configured."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from core import settings
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
    publish(path, table)
    return ShardResult(path, computed=True, forward_passes=passes, rows=table.num_rows)


def publish(path: str, table: pa.Table) -> None:
    """Write a computed shard, once (first writer wins), recording where it was computed."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **computed_by()})
    write_table(path, table, exclusive=True)


def computed_by() -> dict[bytes, bytes]:
    """Parquet metadata naming the host and Dask worker that computed a shard: on a cluster, where
    a model task ran is read back from its shard."""
    where = {b"wdys.host": socket.gethostname().encode()}
    with contextlib.suppress(ImportError, ValueError):  # ValueError: not inside a Dask worker
        from distributed import get_worker

        where[b"wdys.dask_worker"] = str(get_worker().name).encode()
    return where


MODEL_TAG = "gpu"  # the tag of every task that computes on a device (on Dask it asks for a GPU)
_limits_made: set[str] = set()


def device_limit_name(prefix: str, device: str) -> str:
    """`<prefix>-<host>-<device>`, e.g. `gpu-node7-cuda0`: one limit per device of each host. A CUDA
    index counts among $CUDA_VISIBLE_DEVICES, so two workers pinned to different GPUs of one host
    get different limits."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        visible = [v.strip() for v in settings.CUDA_VISIBLE_DEVICES.text().split(",") if v.strip()]
        i = int(index or 0)
        index = visible[i] if i < len(visible) else str(i)
    name = f"{prefix}-{socket.gethostname()}-{kind}{index}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def ensure_limit(name: str) -> None:
    """Create the limit with $WDYS_GPU_SLOTS (default 1) slots the first time this host uses it; an
    existing limit keeps its size (change it with `prefect global-concurrency-limit update`)."""
    if name in _limits_made:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    slots = settings.GPU_SLOTS.integer()
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
    _limits_made.add(name)


@contextmanager
def gpu_slot(model: object) -> Iterator[None]:
    """Hold a slot of the Prefect global concurrency limit of the model's device on this host (named
    from the prefix $WDYS_GPU_LIMIT, which deployments set to `gpu`), strictly. Local runs without a
    server leave the variable unset and take no slot."""
    prefix = settings.GPU_LIMIT.text()
    if not prefix:
        yield
        return
    from prefect.concurrency.sync import concurrency

    name = device_limit_name(prefix, model_device(model))
    ensure_limit(name)
    with concurrency(name, occupy=1, strict=True):
        yield


def model_device(model: object) -> str:
    """The device a model computes on: its own `device`, else the one `pick_device` gives."""
    device = getattr(model, "device", None)
    if device is None:
        from backends.device import pick_device

        device = pick_device()
    return str(device)


@contextmanager
def exclusive(model: object) -> Iterator[Callable[[], int]]:
    """Run one shard at a time on a shared model, inside a slot of its device; yields a function
    giving the forward passes spent so far. A model declaring `concurrent_shards` (a remote describer:
    it bounds its own requests and uses no local device) is shared without a lock or a slot and
    counts per thread, so that shards overlap."""
    if getattr(model, "concurrent_shards", False):
        here = model.passes_in_this_thread  # type: ignore[attr-defined]
        start = here()
        yield lambda: here() - start
        return
    with _registry_lock:
        lock = _model_locks.setdefault(id(model), threading.Lock())
    with lock, gpu_slot(model):
        start = model.forward_passes  # type: ignore[attr-defined]
        yield lambda: model.forward_passes - start  # type: ignore[attr-defined]
