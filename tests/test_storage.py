"""Paths, schemas and atomic writes on real Parquet files and a real DuckDB catalog."""

from __future__ import annotations

import os

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from storage import io as sio
from storage.catalog import create_views, refresh_catalog
from storage.paths import partition_value, resolve_root, shard_path
from storage.schemas import IMAGE_EMBEDDINGS, MANIFEST, PREDICTIONS


def test_partition_values_are_path_safe_and_long_ids_stay_distinct():
    assert partition_value("open_clip:ViT-B-32/openai") == "open_clip_ViT-B-32_openai"
    a = partition_value("open_clip:ViT-B-32//very/long/" + "x" * 100 + "/a.pt")
    b = partition_value("open_clip:ViT-B-32//very/long/" + "x" * 100 + "/b.pt")
    assert a != b and len(a) <= 80 and "/" not in a


def test_shard_path_is_hive_ordered_and_requires_every_key(tmp_path):
    keys = {"dataset": "cifar10", "split": "dev", "subset": "all-shard256"}
    path = shard_path(str(tmp_path), MANIFEST, keys, 3)
    assert path.endswith("manifest/dataset=cifar10/split=dev/subset=all-shard256/v=1/shard-00003.parquet")
    with pytest.raises(ValueError, match="missing keys"):
        shard_path(str(tmp_path), MANIFEST, {"dataset": "cifar10"}, 0)


def test_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("WDYS_ROOT", str(tmp_path / "env"))
    assert resolve_root() == str(tmp_path / "env")
    assert resolve_root(str(tmp_path / "param")) == str(tmp_path / "param")
    assert resolve_root("s3://bucket/x/") == "s3://bucket/x"


def test_embedding_columns_are_fixed_size_float32():
    schema = IMAGE_EMBEDDINGS.schema(384)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert PREDICTIONS.schema().field("scores").type == pa.list_(pa.float32())  # not an embedding
    with pytest.raises(ValueError, match="dimension"):
        IMAGE_EMBEDDINGS.schema()


def test_failed_local_write_leaves_no_file(tmp_path, monkeypatch):
    path = str(tmp_path / "t" / "shard-00000.parquet")
    table = pa.table({"a": [1, 2, 3]})

    def broken_write(tbl, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(sio.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        sio.write_table(path, table)
    assert os.listdir(tmp_path / "t") == []  # neither the shard nor its temp file


def test_write_then_read_roundtrip_and_overwrite_is_whole(tmp_path):
    path = str(tmp_path / "x" / "shard-00000.parquet")
    sio.write_table(path, pa.table({"a": [1]}))
    sio.write_table(path, pa.table({"a": [2, 3]}))
    assert sio.read_table(path).column("a").to_pylist() == [2, 3]
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["shard-00000.parquet"]


def test_catalog_views_read_hive_keys_as_text(tmp_path):
    root = str(tmp_path)
    keys = {"dataset": "d", "split": "s", "subset": "all-shard2"}
    # a prompts hash made only of digits must stay a string, not become a number
    for shard in range(2):
        table = pa.table(
            {
                "image_id": [f"s/{shard}a", f"s/{shard}b"],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8, np.float32)), 4),
                "error": pa.nulls(2, pa.string()),
            },
            schema=IMAGE_EMBEDDINGS.schema(4),
        )
        sio.write_table(shard_path(root, IMAGE_EMBEDDINGS, {**keys, "encoder": "0123"}, shard), table)
    # a stray temp file in the partition is not a shard
    partition = os.path.dirname(shard_path(root, IMAGE_EMBEDDINGS, {**keys, "encoder": "0123"}, 0))
    with open(os.path.join(partition, ".shard-00009.parquet.abc.tmp"), "wb") as f:
        f.write(b"partial")
    database = refresh_catalog(root)
    con = duckdb.connect(database, read_only=True)
    rows = con.sql("select encoder, count(*) from image_embeddings group by encoder").fetchall()
    assert rows == [("0123", 4)]
    con.close()
    con = duckdb.connect()
    assert {"image_embeddings", "predictions", "metrics", "errors"} <= set(create_views(con, root))
    assert con.sql("select count(*) from metrics").fetchall() == [(0,)]  # no predictions yet: empty
