"""Plan a dataset split into shards: which rows, in which shard, with which class names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from core.errors import BadDataset
from sources.base import DatasetSource
from sources.registry import open_dataset
from storage.keys import Selection
from storage.paths import partition_value
from tasks.progress import run_logger


@dataclass(frozen=True)
class Shard:
    """One shard of a planned split: all a shard task needs. Tasks get this, never the whole plan:
    Prefect walks every task's parameters, so a plan of all rows cost O(dataset) per task."""

    selection: Selection
    index: int
    rows: tuple[int, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class ShardPlan:
    selection: Selection
    class_names: tuple[str, ...]
    shards: tuple[tuple[int, ...], ...]

    def shard(self, index: int) -> Shard:
        return Shard(self.selection, index, self.shards[index], self.class_names)


def select_rows(num_rows: int, limit: int | None, seed: int | None) -> list[int]:
    """All rows, the first `limit`, or a seeded sample of `limit` rows (kept in row order)."""
    if limit is None or limit >= num_rows:
        return list(range(num_rows))
    if seed is None:
        return list(range(limit))
    return sorted(np.random.default_rng(seed).choice(num_rows, size=limit, replace=False).tolist())


@task(cache_policy=NO_CACHE, name="plan")
def plan_dataset(selection: Selection) -> ShardPlan:
    source = open_dataset(selection.dataset, selection.split)
    if source.note:
        run_logger().info("%s; filed as dataset %r", source.note, partition_value(selection.dataset))
    check_full_split(selection, source)
    rows = select_rows(source.num_rows, selection.limit, selection.seed)
    size = selection.shard_size
    shards = tuple(tuple(rows[i : i + size]) for i in range(0, len(rows), size))
    return ShardPlan(selection, source.class_names, shards)


def check_full_split(selection: Selection, source: DatasetSource) -> None:
    """A full run of a registered benchmark's evaluation split reads exactly its known number of
    images: a partial copy (the hub's Parquet conversion of a large dataset) would otherwise be
    reported as the benchmark. A `limit` run is a sample and is not checked."""
    expected = source.expected_rows
    if selection.limit is None and expected is not None and source.num_rows != expected:
        raise BadDataset(
            f"{selection.dataset} {selection.split}: the full evaluation split has {expected} images but "
            f"the copy read holds {source.num_rows} ({source.note.split(': ', 1)[-1]}); use a complete "
            "copy (see `wdys datasets`), or --limit N to run a sample"
        )
