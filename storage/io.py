"""Reading and writing Parquet shards on any fsspec filesystem, atomically.

A shard is either complete or absent: locally it is written to a hidden temp file in the same
folder and renamed into place; on object stores it is serialised in memory and uploaded in a single
PUT. Readers (and DuckDB globs) never see a partial file. Shards are written exclusively (the first
writer wins; on S3 a conditional PUT), so a visible shard never changes under a reader.

Credentials and endpoints are the filesystem's own business (for S3: the AWS environment variables
or config files that s3fs and botocore read); they never appear in a path.
"""

from __future__ import annotations

import io
import os
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `url` and the path on it, with no cached directory listings: a
    shard written or removed by another process (a worker elsewhere, an earlier run) must be seen
    at once by the cache check. Instances, and their connections, are still reused."""
    return fsspec.core.url_to_fs(url, use_listings_cache=False)


def exists(path: str) -> bool:
    fs, fs_path = filesystem(path)
    return fs.exists(fs_path)


def remove(path: str) -> None:
    """Delete `path` if it exists."""
    fs, fs_path = filesystem(path)
    if fs.exists(fs_path):
        fs.rm_file(fs_path)


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, fs_path = filesystem(path)
    with fs.open(fs_path, "rb") as f:
        return pq.read_table(f, columns=columns)


def write_table(path: str, table: pa.Table, *, exclusive: bool = False) -> bool:
    """Write `table` to `path` so that the file appears complete or not at all.

    With `exclusive`, a file already at `path` is left as it is and False is returned: the first
    writer wins, so a shard never changes once it is visible, even when two runs compute it at the
    same time (a reader that listed it never finds it replaced under it). Returns True otherwise."""
    fs, fs_path = filesystem(path)
    if isinstance(fs, LocalFileSystem):
        directory, name = os.path.split(fs_path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            pq.write_table(table, tmp, compression="zstd")
            if not exclusive:
                os.replace(tmp, fs_path)
                return True
            try:
                os.link(tmp, fs_path)  # atomic, and fails when the name exists
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: last writer wins
                os.replace(tmp, fs_path)
            return True
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    # One PUT (a multipart upload above 100 MiB, aborted on error): the store publishes the object
    # whole or not at all. Never `fs.open(path, "wb")`: closing it after an error publishes a part.
    if exclusive and _conditional_put(fs):
        try:  # S3 `If-None-Match: *`: refused with 412 when the key exists
            fs.pipe_file(fs_path, buffer.getvalue(), mode="create")
        except FileExistsError:
            return False
        return True
    fs.pipe_file(fs_path, buffer.getvalue())
    return True


def _conditional_put(fs: fsspec.AbstractFileSystem) -> bool:
    """Only s3fs's `pipe_file(mode="create")` is a single conditional PUT; elsewhere `create`
    could mean a streamed write."""
    return type(fs).__module__.split(".")[0] == "s3fs"
