"""A model's turns and its device's slots: shard tasks that share a model take turns on it, and
model compute takes a slot of its device's Prefect global concurrency limit when limits are
configured ($WDYS_GPU_LIMIT)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from backends import vllm_server
from core import settings
from core.errors import BadParameter

_model_locks: dict[int, threading.Lock] = {}
_registry_lock = threading.Lock()

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
    with device_slot(model_device(model)):
        yield


@contextmanager
def server_slot(device: str) -> Iterator[None]:
    """One slot of `device`'s limit, held by a model server (`vllm serve`) for as long as it runs.
    A limit of one slot is refused at once: the server would hold it for the whole run and the run's
    encoder on that device would wait for it forever."""
    with device_slot(device, refuse_below=2):
        yield


@contextmanager
def device_slot(device: str, refuse_below: int = 1) -> Iterator[None]:
    """A slot of `device`'s limit when the run uses limits ($WDYS_GPU_LIMIT); a limit with fewer
    than `refuse_below` slots is refused in one line that says how to grow it."""
    prefix = settings.GPU_LIMIT.text()
    if not prefix:
        yield
        return
    from prefect.concurrency.sync import concurrency

    name = device_limit_name(prefix, device)
    ensure_limit(name)
    if refuse_below > 1:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            size = client.read_global_concurrency_limit_by_name(name).limit
        if size < refuse_below:
            raise BadParameter(
                f"the concurrency limit {name} has {size} slot: a vLLM server holds one for as long as"
                " it runs, leaving none for the run's encoder on that device; give it two (`prefect"
                f" global-concurrency-limit update {name} --limit 2`, or WDYS_GPU_SLOTS=2 before it exists)"
            )
    with concurrency(name, occupy=1, strict=True):
        yield


vllm_server.device_hold = server_slot


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
