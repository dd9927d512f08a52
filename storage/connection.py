"""Opening a storage root's catalog: where its file is, a DuckDB connection that reads the root (an
fsspec filesystem registered for an object store), and the `pending` view made on every connection.

`wdys query` starts here, so this module imports nothing heavier than duckdb and fsspec: no pyarrow,
torch or Prefect (tests/test_startup.py); building the catalog is `storage.catalog`'s work.
"""

from __future__ import annotations

import os

import duckdb
import fsspec

from core import settings
from storage.paths import PENDING_ITEMS, catalog_path, is_local, pending_glob

ANSWER_TABLES = ("descriptions", "class_descriptions")  # the tables whose shards may wait as pending


def catalog_file(root: str) -> str:
    """The catalog of a root: `<root>/wdys.duckdb`, or for an object-store root a local copy in
    $WDYS_CATALOG_DIR (default ./.wdys), since DuckDB files cannot live on S3."""
    return catalog_path(root) if is_local(root) else local_catalog_path(root)


def local_catalog_path(root: str) -> str:
    safe = root.replace("://", "_").replace("/", "_")
    return os.path.join(settings.CATALOG_DIR.text(), safe, "wdys.duckdb")


def connect(root: str, database: str = ":memory:", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(database, read_only=read_only, config={"autoinstall_known_extensions": False})
    if not is_local(root):
        # A filesystem instance of the connection's own: it sees the store as it is when the
        # connection opens and keeps that listing for its life. One flat listing of the root fills
        # it, so DuckDB's globs (one listing per folder otherwise) and size look-ups cost no request.
        # Credentials and endpoint are the filesystem's own configuration (for S3, the environment).
        fs, base = fsspec.core.url_to_fs(root, skip_instance_cache=True)
        fs.find(base)
        con.register_filesystem(fs)
    return con


def create_pending_view(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """A temporary `pending` view on this connection: the items still waiting for an answer after
    transient failures (tasks/answers.py), one row per item: its pending file (beside the shard it
    will complete), its key, how often it was asked and its last error. Made on every connection
    (`make query`) rather than in the catalog: it must show the store as it is now, after a run
    that failed on them, and pending files disappear once their shard is published."""
    globs = [pending_glob(root, name) for name in ANSWER_TABLES]
    globs = [g for g in globs if con.execute("select file from glob(?) limit 1", [g]).fetchall()]
    columns = "file, item ->> 0 as item, (item ->> 1)::int as attempts, item ->> 2 as last_error"
    if not globs:
        con.execute(
            f"create or replace temp view pending as select {columns} from (select null::json as item, "
            "null::varchar as file) where false"
        )
        return
    files = ", ".join(f"'{g}'" for g in globs)
    con.execute(f"""
create or replace temp view pending as
with items as (
    select file_name as file, unnest(from_json(decode(value), '["json"]')) as item
    from parquet_kv_metadata([{files}]) where decode(key) = '{PENDING_ITEMS}'
)
select {columns} from items order by file, item
""")
