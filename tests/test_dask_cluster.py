"""A real Dask cluster of separate processes: a scheduler and two workers started with the `dask`
command on 127.0.0.1, one offering `GPU=1` (named gpu0) and one offering nothing (cpu0). The
workers run from another folder with the repository on PYTHONPATH, as a remote worker would.

The benchmark on the cluster gives the metrics of the thread-pool run on the same images, with a
local root both see and with an S3 root (moto); every model shard records that gpu0 computed it;
a run whose model tasks no worker could take, or whose root the workers cannot see, fails before
any task."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from process_support import REPO, free_port, start, stop
from runs import tiny_run
from s3_support import moto_s3
from vllm_support import FAKE, alive, started, use_fake_vllm

from core.errors import UserError
from flows.benchmark import benchmark
from flows.cluster import PlacedDaskTaskRunner
from storage.io import filesystem
from storage.paths import partition_value
from tasks.answers import for_describer
from tasks.class_weights import describe_classes
from tasks.describe import describe_shard, guess_shard
from tasks.slots import MODEL_TAG

pytestmark = pytest.mark.slow

BUCKET = "wdys-cluster"
PARAMS = tiny_run(limit=32, seed=5, shard_size=16, class_weights=["name", "descriptions"])
MODEL_TABLES = ("descriptions", "image_embeddings", "text_embeddings", "class_descriptions", "class_weights")
OTHER_TABLES = ("manifest", "predictions")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """moto first, so the workers inherit its AWS settings; then the scheduler and the workers."""
    with moto_s3(tmp_path_factory, "AKIAWDYSCLUSTER00042", "wdys-cluster-secret", BUCKET):
        logs = tmp_path_factory.mktemp("dask")
        elsewhere = tmp_path_factory.mktemp("worker-cwd")  # not the repository: PYTHONPATH must do
        env = {**os.environ, "PYTHONPATH": str(REPO), **workers_vllm(tmp_path_factory)}
        dask = str(Path(sys.executable).parent / "dask")
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        procs = [
            start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env,
                  logs / "scheduler.log", cwd=elsewhere)
        ]  # fmt: skip
        try:
            wait_for_port(port, procs[0], logs / "scheduler.log")
            for name, extra in (("gpu0", ["--resources", "GPU=1"]), ("cpu0", [])):
                worker = [dask, "worker", address, "--nthreads", "1", "--name", name, "--no-dashboard"]
                procs.append(start([*worker, *extra], env, logs / f"{name}.log", cwd=elsewhere))
            import distributed

            with distributed.Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            yield address
        finally:
            for proc in reversed(procs):
                stop(proc)


def workers_vllm(tmp_path_factory) -> dict[str, str]:
    """The workers' `vllm`: the stand-in, recording the servers it starts where the test reads them."""
    base = tmp_path_factory.getbasetemp()
    return {
        "WDYS_VLLM": str(FAKE),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NO_PROXY": "127.0.0.1,localhost",
        "FAKE_VLLM_RECORD": str(base / "dask-vllm-started.jsonl"),
        "WDYS_VLLM_LOG_DIR": str(base / "dask-vllm-logs"),
    }


def wait_for_port(port: int, proc, log: Path) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    pytest.fail("the dask scheduler did not listen:\n" + log.read_text()[-3000:])


def on_cluster(address: str):
    return benchmark.with_options(task_runner=PlacedDaskTaskRunner(address=address))


@pytest.fixture(scope="module")
def local_run(prefect_server, tmp_path_factory):
    """The reference: the default thread pool, in this process."""
    return benchmark(root=str(tmp_path_factory.mktemp("threads")), **PARAMS)


def by_key(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["class_weights"], r["components"]))


def computed_where(root: str) -> dict[str, set[str]]:
    """Each table's Dask workers, read from the metadata of every shard under the root."""
    fs, base = filesystem(root)
    where: dict[str, set[str]] = {}
    for path in fs.glob(f"{base}/**/*.parquet"):
        table = path[len(base) :].strip("/").split("/")[0]
        if table == "key_values":  # the lookup of slugs and hashes: the flow writes it, not a task
            continue
        with fs.open(path, "rb") as f:
            meta = pq.read_schema(f).metadata or {}
        where.setdefault(table, set()).add(meta.get(b"wdys.dask_worker", b"<none>").decode())
    return where


@pytest.mark.parametrize("where", ["local", "s3"])
def test_cluster_gives_the_thread_pool_metrics_with_models_on_the_gpu_worker(
    where, cluster, local_run, tmp_path
):
    root = str(tmp_path / "shared") if where == "local" else f"s3://{BUCKET}/cluster"
    result = on_cluster(cluster)(root=root, **PARAMS)
    # Every shard once (a task rerun after a lost worker finds that worker's shard: it counts as cached)
    total = local_run["shards_computed"] + local_run["shards_cached"]
    assert result["shards_computed"] + result["shards_cached"] == total == local_run["shards_computed"] > 0
    a, b = by_key(local_run["metrics"]), by_key(result["metrics"])
    assert len(a) == len(b) == 2 * 7
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y)  # top-k is identical; DuckDB may sum floats in another order
    placed = computed_where(result["root"])
    assert set(placed) == {*MODEL_TABLES, *OTHER_TABLES}
    for table in MODEL_TABLES:
        assert placed[table] == {"gpu0"}, f"{table} computed on {placed[table]}"
    for table in OTHER_TABLES:  # ingest and classify may go anywhere, but only to the workers
        assert placed[table] <= {"gpu0", "cpu0"}, f"{table} computed on {placed[table]}"


def test_vllm_servers_on_the_workers_stop_with_the_run_and_leave_their_logs(
    cluster, prefect_server, tmp_path, tmp_path_factory, monkeypatch
):
    for _ in use_fake_vllm(monkeypatch, tmp_path):  # the flow's machine asks `vllm --version`
        params = {**PARAMS, "describers": ["vllm:org/on-dask"], "root": str(tmp_path / "root")}
        result = on_cluster(cluster)(**params)

    servers = started(Path(workers_vllm(tmp_path_factory)["FAKE_VLLM_RECORD"]))
    assert [s["model"] for s in servers] == ["org/on-dask"]  # one, on the GPU worker, for every shard
    assert not alive(servers[0]["pid"])  # stopped when the run ended; the worker lives on
    (log,) = Path(result["report"]).glob("vllm-*.log")
    assert log.name == f"vllm-{partition_value('org/on-dask')}-gpu0.log"
    assert "serving org/on-dask" in log.read_text()


def test_no_worker_offers_the_resource_fails_before_any_task(cluster, prefect_server, tmp_path, monkeypatch):
    monkeypatch.setenv("WDYS_DASK_GPU_RESOURCE", "TPU")  # nobody offers it: Dask would wait forever
    started = time.monotonic()
    with pytest.raises(UserError, match=r"no Dask worker .* offers the resource TPU=1.*GPU=1"):
        on_cluster(cluster)(root=str(tmp_path / "root"), **PARAMS)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "root" / "manifest").exists()


def test_a_root_the_workers_cannot_see_fails_before_any_task(cluster, prefect_server):
    """memory:// lives in this process only, like a local folder that is not a shared mount."""
    root = "memory://wdys-not-shared/run"
    with pytest.raises(UserError, match=r"workers cannot see the storage root memory://.*cpu0.*gpu0"):
        on_cluster(cluster)(root=root, **PARAMS)
    fs = fsspec.filesystem("memory")
    assert not fs.exists("/wdys-not-shared/run/manifest")
    assert fs.glob("/wdys-not-shared/run/.wdys-reach/*") == []  # the marker is removed again


@pytest.mark.parametrize("describer_task", [describe_shard, guess_shard, describe_classes])
def test_a_served_describer_asks_no_gpu_and_keeps_its_retries(describer_task) -> None:
    """An `openai:` describer only sends requests: its tasks drop the model tag (no GPU resource on
    Dask, no tag-concurrency lease per task); a local describer's keep it."""
    served = for_describer(describer_task, "openai:some-vlm")
    assert MODEL_TAG in describer_task.tags and MODEL_TAG not in served.tags
    assert served.retries == describer_task.retries and served.retry_condition_fn is not None
    assert for_describer(describer_task, "offline:conse-lite0") is describer_task
    assert for_describer(describer_task, "hf:org/vlm") is describer_task
    assert for_describer(describer_task, "openai:other-vlm") is served  # one variant per task
