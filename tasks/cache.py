"""What every shard task returns, and the rules they share: a shard that exists is not recomputed,
and a computed shard records where it was computed. A model's turns and its device's slots are in
`tasks/slots.py`."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from storage.io import exists, write_table
from storage.reuse import ID, ordered, reusable_rows


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


def cached_image_rows(
    path: str, image_ids: Callable[[], Sequence[str]], compute: Callable[[list[int]], tuple[pa.Table, int]]
) -> ShardResult:
    """`cached_shard` for a table of one row per image (`image_ids()`, in row order, asked only when
    the shard does not exist yet): the rows of those images stored under another selection with
    every other key equal are reused as they are (`storage.reuse`), and `compute(positions)` makes
    the rows of the others, with its forward passes; it is not called when every row is found."""
    if exists(path):
        return ShardResult(path, computed=False)
    ids = image_ids()
    reused = reusable_rows(path, ids)
    have = set(reused.column(ID).to_pylist()) if reused is not None else set()
    todo = [i for i, k in enumerate(ids) if k not in have]
    parts, passes = [] if reused is None else [reused], 0
    if todo or not parts:
        table, passes = compute(todo)
        parts = [*(p.cast(table.schema) for p in parts), table]
    table = ordered(pa.concat_tables(parts), [ID], ids)
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
