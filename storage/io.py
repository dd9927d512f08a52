"""Reading and writing Parquet shards on any fsspec filesystem, atomically.

A shard is either complete or absent: locally it is written to a hidden temp file in the same
folder and renamed into place; on object stores it is uploaded in a single PUT. Readers (and
DuckDB globs) never see a partial file.
"""

from __future__ import annotations

import io
import os
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def filesystem(path: str) -> fsspec.AbstractFileSystem:
    fs, _ = fsspec.core.url_to_fs(path)
    return fs


def exists(path: str) -> bool:
    return filesystem(path).exists(path)


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, fs_path = fsspec.core.url_to_fs(path)
    with fs.open(fs_path, "rb") as f:
        return pq.read_table(f, columns=columns)


def write_table(path: str, table: pa.Table) -> None:
    """Write `table` to `path` so that the file appears complete or not at all."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        directory, name = os.path.split(fs_path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, fs_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    fs.pipe_file(fs_path, buffer.getvalue())  # one PUT: the object exists whole or not at all
