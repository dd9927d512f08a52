"""The benchmark's shard tasks on a local two-worker Dask cluster give predictions identical to the
default (thread pool) task runner's."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from runs import tiny_run

from flows.benchmark import benchmark, benchmark_on_dask

PARAMS = tiny_run(limit=16, seed=3, class_weights=["name", "descriptions"])


def predictions(root) -> list[dict]:
    table = pq.read_table(root / "predictions", partitioning="hive").to_pylist()
    return sorted(table, key=lambda r: (r["class_weights"], r["components"], r["image_id"]))


def test_dask_predictions_equal_thread_pool_predictions(prefect_server, tmp_path, monkeypatch):
    monkeypatch.setenv("WDYS_DASK_WORKERS", "2")
    local = benchmark(root=str(tmp_path / "threads"), **PARAMS)
    on_dask = benchmark_on_dask(root=str(tmp_path / "dask"), **PARAMS)
    # Every shard once; a worker lost mid-run (a loaded machine) has its task rerun, which then
    # finds the shard that worker wrote: computed + cached, not computed alone, is the invariant.
    total = local["shards_computed"] + local["shards_cached"]
    assert on_dask["shards_computed"] + on_dask["shards_cached"] == total == local["shards_computed"] > 0
    a, b = predictions(tmp_path / "threads"), predictions(tmp_path / "dask")
    assert len(a) == 16 * 7 * 2
    assert [r["top5"] for r in a] == [r["top5"] for r in b]  # the predictions: identical
    # Scores agree to float32 rounding: a single-threaded Dask worker sums in another order than
    # torch's two intra-op threads do.
    np.testing.assert_allclose([r["scores"] for r in a], [r["scores"] for r in b], rtol=0, atol=1e-6)
