"""The DuckDB catalog: `<root>/wdys.duckdb` holds one view per Parquet table plus `metrics`.

The views read the shards in place (hive partitions become columns), so the file stays small and
is always current; the plain `duckdb` command line can open it. On an object-store root the views
name the shards by their own URLs (`s3://bucket/...`): in Python they are read through the fsspec
filesystem registered on the connection (DuckDB's httpfs cannot be installed here), in the plain
`duckdb` command line through httpfs, on the catalog copied to `<root>/wdys.duckdb`.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence

import duckdb
import fsspec
import pyarrow as pa

from storage.analysis import COMPONENT_ORDER, Registered, create_analysis_views
from storage.connection import catalog_file, connect
from storage.leaderboard import create_leaderboard_view
from storage.paths import catalog_path, is_local, table_glob
from storage.reference import published_sql
from storage.schemas import RUN_KEYS, TABLES

# One row per (run keys, components): accuracy over the images that had a query, per-class recall
# averaged over classes, and the gain in points over the image-only row of the same keys. `partial`
# counts the images of `n` whose query lacks one of its components (a failed description or
# prediction, an image that did not embed): the single-component rows of the same image say which.
# `full_split`: the row covers every image of its split (a registered benchmark's evaluation split is
# then checked to hold its known size, tasks/plan.py), not a `limit` sample.
METRICS_SQL = f"""
create or replace view metrics as
with missing as (
    select *, coalesce(list(components) filter (where top5 is null and components not like '%+%')
                       over (partition by {", ".join(RUN_KEYS)}, image_id), []) as missing
    from predictions
), scored as (
    select {", ".join(RUN_KEYS)}, components, label,
           top5 is null as excluded,
           top5 is not null and list_has_any(string_split(components, '+'), missing) as partial,
           coalesce(top5[1] = label, false) as hit1,
           coalesce(list_contains(top5, label), false) as hit5
    from missing
), per_class as (
    select {", ".join(RUN_KEYS)}, components, label,
           count(*) filter (where not excluded) as n,
           count(*) filter (where excluded) as excluded,
           count(*) filter (where partial) as partial,
           count(*) filter (where hit1) as correct1,
           count(*) filter (where hit5) as correct5
    from scored group by all
), by_run as (
    select {", ".join(RUN_KEYS)}, components,
           sum(n)::bigint as n,
           sum(excluded)::bigint as excluded,
           sum(partial)::bigint as partial,
           100.0 * sum(correct1) / nullif(sum(n), 0) as top1,
           100.0 * sum(correct5) / nullif(sum(n), 0) as top5,
           100.0 * avg(correct1 / nullif(n, 0)) as mean_per_class_recall
    from per_class group by all
)
select r.*, r.top1 - base.top1 as gain_top1, r.top5 - base.top5 as gain_top5,
       r.subset like 'all-%' as full_split
from by_run r
left join by_run base
  on {" and ".join(f"base.{k} = r.{k}" for k in RUN_KEYS)} and base.components = 'image'
order by {", ".join(RUN_KEYS)}, list_position({COMPONENT_ORDER}, r.components)
"""


# Every recorded failure, one row per (image, stage, model): decoding or embedding an image, or a
# describer answer that failed after its retries. `location` says where the image is: its file (an
# ImageFolder's URI) or its row in the dataset (the location from `keys` where the run recorded it).
def errors_sql(with_keys: bool) -> str:
    where = "k.raw" if with_keys else "f.dataset"
    keys = "left join keys k on k.key = 'dataset' and k.value = f.dataset" if with_keys else ""
    return f"""
create or replace view errors as
with failed as (
    select dataset, split, subset, image_id, 'image' as stage, encoder as model, error
    from image_embeddings where error is not null
    union all
    select dataset, split, subset, image_id, kind as stage, describer as model, error
    from descriptions where error is not null
)
select f.dataset, f.split, f.subset, f.image_id,
       coalesce(m.uri, {where} || ' (' || f.split || ') row ' || m.row) as location,
       f.stage, f.model, f.error
from failed f
left join manifest m using (dataset, split, subset, image_id)
{keys}
"""


# What each slug and hash in the tables stands for (tasks/key_values.py writes `key_values`), and the
# models among them.
KEYS_SQL = """
create or replace view keys as
select key, value, any_value(raw) as raw, any_value(meaning) as meaning
from key_values group by key, value order by key, value
"""

MODELS_SQL = """
create or replace view models as
select key as role, value, raw as model_id, meaning ->> 'backend' as backend, meaning ->> 'model' as model,
       meaning ->> 'revision' as revision
from keys where key in ('encoder', 'describer') and value <> 'none'
"""

# Why images were left out of a run's metrics: the first error recorded for the image.
EXCLUSIONS_SQL = f"""
create or replace view exclusions as
with reasons as (
    select dataset, split, subset, image_id, min(error) as reason from errors group by all
)
select {", ".join(f"p.{k}" for k in RUN_KEYS)}, p.components,
       coalesce(r.reason, 'no component available') as reason, count(*) as images
from predictions p
left join reasons r using (dataset, split, subset, image_id)
where p.top5 is null
group by all
"""


_lock = threading.Lock()


def create_views(
    con: duckdb.DuckDBPyConnection, root: str, registered: Sequence[Registered] = ()
) -> list[str]:
    """A view per table (DuckDB binds a glob when the view is made; a table without shards yet is
    an empty view of its columns), then metrics and the analysis views of `storage.analysis` (gains,
    per_class, confusion, ...): every view docs/querying.md names is in every root's catalog.
    The shards are listed by the connection itself, through the filesystem its views read.
    `registered`: (name, evaluation split, classes) of the registered benchmarks, for `benchmarks`."""
    for name in TABLES:
        glob = table_glob(root, name)
        if not con.execute("select file from glob(?) limit 1", [glob]).fetchall():
            create_empty_view(con, name)
            continue
        con.execute(
            f"create or replace view {name} as select * from read_parquet('{glob}', "
            "hive_partitioning = true, hive_types_autocast = false, union_by_name = true)"
        )
    for sql in (KEYS_SQL, MODELS_SQL, errors_sql(True), METRICS_SQL, EXCLUSIONS_SQL):
        con.execute(sql)
    made = [*TABLES, "keys", "models", "errors", "metrics", "exclusions"]
    made += create_analysis_views(con, made, registered)
    con.execute(published_sql())
    made.append("published_baselines")
    made += create_leaderboard_view(con, made)
    return made


def create_empty_view(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """A table that nothing fed yet (no describer ran, say): a view with the columns its shards will
    have (hive keys and `v` as text, as the shards' views read them) and no rows, so that a query
    naming it answers instead of failing."""
    spec = TABLES[name]
    keys = [pa.field(k, pa.string()) for k in (*spec.partition_keys, "v")]
    con.register("wdys_empty", pa.schema([*spec.columns, *keys]).empty_table())
    try:
        columns = con.execute("select column_name, column_type from (describe wdys_empty)").fetchall()
    finally:
        con.unregister("wdys_empty")
    nulls = ", ".join(f'null::{kind} as "{column}"' for column, kind in columns)
    con.execute(f"create or replace view {name} as select {nulls} where false")


def refresh_catalog(root: str, registered: Sequence[Registered] = ()) -> str:
    """(Re)write `<root>/wdys.duckdb`. For object-store roots the file is made in a local cache
    folder ($WDYS_CATALOG_DIR, default ./.wdys), where `wdys query` opens it (DuckDB writes no
    database on S3), then copied to the root (`publish_catalog`); returns the local path."""
    path = catalog_file(root)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    # Built aside and renamed into place: two runs refreshing at once never meet on DuckDB's file
    # lock, and a reader (make query) never sees a half-made catalog.
    tmp = os.path.join(directory, f".wdys.{uuid.uuid4().hex}.tmp.duckdb")
    try:
        with _lock, connect(root, tmp) as con:
            create_views(con, root, registered)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".wal"):
            if os.path.exists(leftover):
                os.remove(leftover)
    if not is_local(root):
        publish_catalog(path, root)
    return path


def publish_catalog(path: str, root: str) -> None:
    """Copy the finished catalog to `<root>/wdys.duckdb` beside the results, so that anyone with
    read access to the bucket can attach it read-only: its views name the shards by their URLs
    (`s3://...`), which DuckDB's httpfs reads as they are, and our registered fsspec filesystem too.
    One upload (a single PUT, or a multipart upload completed at once): a reader sees the previous
    catalog or this one, never a part."""
    fs, target = fsspec.core.url_to_fs(catalog_path(root))
    fs.put_file(path, target)
