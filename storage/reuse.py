"""Rows of an image already computed under another selection of the same split.

Answers and embeddings are one row per image, and a row depends on the image and on the table's
other keys (model, prompts, generation settings, shortlist), never on which rows a run selected or
how it sharded them (`subset`). A shard about to be computed first takes, byte for byte, the rows of
its images stored under a sibling `subset` with every other key equal (published shards, and the
final answers waiting in their pending files): a `--limit 200` trial followed by the full split asks
only the images the trial did not. The shard written still lists exactly its own selection's images.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.io import filesystem

ID = "image_id"


def sibling_shards(path: str) -> list[str]:
    """The shards (published first, then pending files) of the table and keys of the shard at
    `path` under every other `subset`; none for a table without one."""
    directory, _, _ = path.rpartition("/")
    parts = directory.split("/")
    at = next((i for i, p in enumerate(parts) if p.startswith("subset=")), None)
    if at is None:
        return []
    pattern = "/".join([*parts[:at], "subset=*", *parts[at + 1 :], "*.parquet"])
    fs, fs_pattern = filesystem(pattern)
    prefix = path[: path.index("://") + 3] if "://" in path else ""
    own = "/".join(parts[: at + 1]) + "/"
    found = [prefix + p for p in fs.glob(fs_pattern) if not (prefix + p).startswith(own)]
    published = sorted(p for p in found if not p.rpartition("/")[2].startswith("."))
    pending = sorted(p for p in found if p.endswith(".pending.parquet"))
    return published + pending


def reusable_rows(path: str, ids: Sequence[str]) -> pa.Table | None:
    """The stored rows of the images `ids` found under sibling selections of the shard at `path`
    (`sibling_shards`), one per image, without file metadata; None when none is stored."""
    wanted = set(ids)
    if not wanted:
        return None
    low, high = min(wanted), max(wanted)
    found: list[pa.Table] = []
    for shard in sibling_shards(path):
        fs, fs_path = filesystem(shard)
        with fs.open(fs_path, "rb") as f:
            parquet = pq.ParquetFile(f)
            if not _may_hold(parquet.metadata, low, high):
                continue
            table = parquet.read()
        rows = table.filter(pc.is_in(table.column(ID), pa.array(sorted(wanted), pa.string())))
        if rows.num_rows:
            found.append(rows.replace_schema_metadata(None))
            wanted -= set(rows.column(ID).to_pylist())
        if not wanted:
            break
    if not found:
        return None
    return pa.concat_tables([t.cast(found[0].schema) for t in found])


def _may_hold(metadata: pq.FileMetaData, low: str, high: str) -> bool:
    """Whether a file's image ids (by its row groups' statistics) may fall in [low, high]: image ids
    follow row order, so most shards of a big split are skipped after reading their footer alone."""
    column = metadata.schema.names.index(ID) if ID in metadata.schema.names else None
    if column is None:
        return False
    for g in range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or (stats.min <= high and stats.max >= low):
            return True
    return False


def ordered(table: pa.Table, key_columns: Sequence[str], keys: Sequence[Hashable]) -> pa.Table:
    """`table`'s rows in the order of `keys` (values of `key_columns`, a tuple for several)."""
    position = {k: i for i, k in enumerate(keys)}
    rows = zip(*(table.column(c).to_pylist() for c in key_columns), strict=True)
    found = [position[k if len(key_columns) > 1 else k[0]] for k in rows]
    return table.take(pa.array(np.argsort(found, kind="stable")))
