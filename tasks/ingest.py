"""Ingest one shard: the manifest rows (image id, label, image bytes or URI) of a dataset split."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from sources.base import image_ids
from sources.registry import open_dataset
from storage.addresses import manifest_shard
from tasks.cache import ShardResult, cached_image_rows
from tasks.plan import Shard
from tasks.progress import stage


@stage("ingest")
@task(cache_policy=NO_CACHE, name="ingest")
def ingest_shard(root: str, shard: Shard) -> ShardResult:
    """The rows of images another selection of the split already ingested are copied, not read again."""
    sel = shard.selection

    def compute(todo: list[int]):
        return open_dataset(sel.dataset, sel.split).manifest([shard.rows[i] for i in todo]), 0

    path = manifest_shard(root, sel, shard.index)
    return cached_image_rows(path, lambda: image_ids(sel.split, shard.rows), compute)
