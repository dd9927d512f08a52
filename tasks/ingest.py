"""Ingest one shard: the manifest rows (image id, label, image bytes or URI) of a dataset split."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from sources.registry import open_dataset
from storage.addresses import manifest_shard
from tasks.cache import ShardResult, cached_shard
from tasks.plan import Shard
from tasks.progress import stage


@stage("ingest")
@task(cache_policy=NO_CACHE, name="ingest")
def ingest_shard(root: str, shard: Shard) -> ShardResult:
    sel = shard.selection

    def compute():
        return open_dataset(sel.dataset, sel.split).manifest(shard.rows), 0

    return cached_shard(manifest_shard(root, sel, shard.index), compute)
