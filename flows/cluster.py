"""Running the shard tasks on Dask: where model tasks may go, and the checks made before any task.

Model tasks (those tagged `gpu`: describe, guess, describe-classes, embed-images, embed-texts,
class-weights) ask the scheduler for a worker resource, $WDYS_DASK_GPU_RESOURCE (default `GPU`) x
$WDYS_DASK_GPU_AMOUNT (default 1), so they run only on workers started with `--resources GPU=1`;
ingest and classify go anywhere. An empty resource name turns placement off.

Before the first task the flow asks the scheduler whether some worker offers that resource (Dask
would otherwise wait forever for one) and, on a remote cluster, whether every worker sees the
storage root: the flow writes a marker file there and each worker must read it back.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import nullcontext
from typing import Any

import dask
import distributed
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from backends.vllm_server import stop_all
from core import settings
from core.errors import UserError
from storage.io import filesystem
from tasks.slots import MODEL_TAG

MARKER_DIR = ".wdys-reach"


def gpu_resources() -> dict[str, float]:
    """The Dask resource a model task asks for; {} when $WDYS_DASK_GPU_RESOURCE is set empty."""
    raw = settings.DASK_GPU_RESOURCE.get()
    name = (settings.DASK_GPU_RESOURCE.text() if raw is None else raw).strip()  # set empty: none
    if not name:
        return {}
    amount = settings.DASK_GPU_AMOUNT.number()
    if amount <= 0:
        raise UserError(f"{settings.DASK_GPU_AMOUNT.name} must be positive, not {amount}")
    return {name: amount}


class PlacedDaskTaskRunner(DaskTaskRunner):
    """prefect-dask's runner, with model tasks annotated with the GPU resource. distributed's client
    merges `dask.annotate(...)` into what it sends the scheduler (tests/test_dask_cluster.py shows
    it reaches the placement)."""

    def submit(self, task: Any, parameters: dict[str, Any], *args: Any, **kwargs: Any):
        on_device = MODEL_TAG in task.tags or getattr(task, "on_device", False)  # `vllm:` describer tasks
        resources = gpu_resources() if on_device else {}
        with dask.annotate(resources=resources) if resources else nullcontext():
            return super().submit(task, parameters, *args, **kwargs)

    def __exit__(self, *args: Any) -> None:
        """The `vllm serve` processes the run's tasks started on the workers stop when the run
        ends, however it ends, as the flow's own do: a cluster's workers outlive the run."""
        if self._client is not None:
            try:
                self._client.run(stop_all)
            except Exception as exc:  # noqa: BLE001 - the cluster is gone: so are its servers
                logging.getLogger("wdys.cluster").warning("vLLM servers on the workers not stopped: %s", exc)
        super().__exit__(*args)


def dask_task_runner() -> PlacedDaskTaskRunner:
    """The Dask scheduler at $WDYS_DASK_ADDRESS, else a local cluster of $WDYS_DASK_WORKERS (2)
    single-threaded worker processes, each offering the GPU resource once (one machine: placement
    changes nothing there). Shards live on shared storage, so any worker can take any task."""
    address = settings.DASK_ADDRESS.text()
    if address:
        return PlacedDaskTaskRunner(address=address)
    workers = settings.DASK_WORKERS.integer()
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True}
    return PlacedDaskTaskRunner(cluster_kwargs={**cluster, "resources": gpu_resources()})


class DaskFromSettings(PlacedDaskTaskRunner):
    """`dask_task_runner()`, made when a run starts (Prefect enters a `duplicate()` of the flow's
    task runner for each run): the settings are read then, not when the flow module is imported."""

    def duplicate(self) -> PlacedDaskTaskRunner:
        return dask_task_runner()


def check_cluster(root: str) -> None:
    """On a cluster at $WDYS_DASK_ADDRESS, fail before any task when no worker could take the model
    tasks or a worker cannot see `root`. Off Dask, or on a local cluster (processes of this machine,
    each offering the resource), there is nothing to check."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, PlacedDaskTaskRunner):
        return
    if runner.address:
        check_gpu_workers(runner.client)
        check_root_shared(runner.client, root)


def check_gpu_workers(client: distributed.Client) -> None:
    """Dask keeps a task whose resource no worker offers waiting forever: say so instead."""
    wanted = gpu_resources()
    if not wanted:
        return
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any(all(w.get("resources", {}).get(k, 0) >= v for k, v in wanted.items()) for w in workers):
        return
    (name, amount), *_ = wanted.items()
    offered = sorted({f"{k}={v:g}" for w in workers for k, v in w.get("resources", {}).items()})
    raise UserError(
        f"no Dask worker at {client.scheduler.address} offers the resource {name}={amount:g} that model "
        f"tasks need ({len(workers)} workers; resources offered: {', '.join(offered) or 'none'}). Start a "
        f"GPU worker with `dask worker {client.scheduler.address} --resources {name}=1`, or set "
        f"{settings.DASK_GPU_RESOURCE.name}= (empty) to place model tasks anywhere"
    )


def check_root_shared(client: distributed.Client, root: str) -> None:
    """Every worker must read a marker file this process has just written under the root: a local
    path that is not a shared mount, or a bucket the workers' credentials or endpoint do not reach,
    fails here instead of in the first task."""
    token = uuid.uuid4().hex
    marker = f"{root}/{MARKER_DIR}/{token}"
    fs, path = filesystem(marker)
    fs.makedirs(fs._parent(path), exist_ok=True)  # a no-op on object stores
    fs.pipe_file(path, token.encode())
    try:
        seen = client.run(_reads_marker, marker, token)
    finally:
        fs.rm_file(path)
    names = {a: w.get("name", a) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    blind = {names.get(address, address): problem for address, problem in seen.items() if problem}
    if blind:
        details = "; ".join(f"{w}: {p}" for w, p in sorted(blind.items()))
        raise UserError(
            f"the Dask workers cannot see the storage root {root} ({details}). Use a root every worker "
            "shares (s3://... with the same AWS settings on the workers, or a filesystem mounted at the "
            "same path everywhere); docs/operations.md lists what a worker needs"
        )


def _reads_marker(marker: str, token: str) -> str:
    """Runs on each worker: '' when the marker reads back, else what went wrong."""
    try:
        fs, path = filesystem(marker)
        got = fs.cat_file(path).decode()
    except Exception as exc:  # noqa: BLE001 - any failure means the root is out of reach
        return f"{type(exc).__name__}: {exc}"[:300]
    return "" if got == token else "the marker file holds something else"
