"""An `s3://` storage root on moto's S3 server (127.0.0.1): the benchmark writes the same metrics as
with a local root, reruns compute nothing, DuckDB reads the results through fsspec (in a second
process with nothing of ours, on the catalog copied beside the results), interrupted
writes leave no object, and no credential is stored. Credentials and endpoint come from the
environment only."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from botocore.exceptions import BotoCoreError
from runs import assert_same_metrics, tiny_run
from s3_support import moto_s3

from flows.benchmark import benchmark
from storage import io as sio
from storage import query
from storage.connection import connect, local_catalog_path
from storage.paths import resolve_root

BUCKET, PREFIX = "wdys-test", "runs/quick"
ROOT = f"s3://{BUCKET}/{PREFIX}"
UNIT = f"s3://{BUCKET}/unit"  # objects of the write tests, outside the benchmark root
KEY_ID, SECRET = "AKIAWDYSSENTINEL0042", "wdys-sentinel-secret-7f3c9a1e"
PARAMS = tiny_run(seed=1, class_weights=["name", "template"])


def fresh_fs() -> s3fs.S3FileSystem:
    """A new client with no listing cache: sees exactly what the server holds now."""
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 and an environment that points every AWS client at it."""
    with moto_s3(tmp_path_factory, KEY_ID, SECRET, BUCKET) as (port, _):
        yield port


@pytest.fixture(scope="module")
def runs(s3, prefect_server, tmp_path_factory):
    local = tmp_path_factory.mktemp("local")
    return local, benchmark(root=str(local), **PARAMS), benchmark(root=ROOT, **PARAMS)


def test_s3_root_writes_the_same_metrics_and_shards_as_a_local_root(runs):
    local, on_disk, on_s3 = runs
    assert on_s3["root"] == ROOT and on_s3["forward_passes"] > 0
    assert on_s3["shards_computed"] == on_disk["shards_computed"] > 0
    assert_same_metrics(on_s3["metrics"], on_disk["metrics"], 2 * 7)
    objects = {p.removeprefix(f"{BUCKET}/{PREFIX}/") for p in fresh_fs().glob(f"{ROOT}/**/*.parquet")}
    assert objects == {p.relative_to(local).as_posix() for p in local.rglob("*.parquet")}
    assert {p.split("/", 1)[0] for p in objects} == {
        "manifest",
        "descriptions",
        "image_embeddings",
        "text_embeddings",
        "class_weights",
        "predictions",
        "key_values",  # the run's lookup of what its slugs and hashes stand for
    }  # no class descriptions: neither weighting uses them


def test_rerun_on_s3_computes_nothing(runs):
    _, _, first = runs
    again = benchmark(root=ROOT, **PARAMS)
    assert again["forward_passes"] == 0 and again["shards_computed"] == 0
    assert again["shards_cached"] == first["shards_computed"]
    assert_same_metrics(again["metrics"], first["metrics"], 2 * 7)


def test_a_shard_removed_by_another_client_is_recomputed(runs):
    """Existence checks and catalog globs ask the store, not a listing cached by an earlier run."""
    _, _, first = runs
    other = fresh_fs()
    victim = sorted(other.find(f"{BUCKET}/{PREFIX}/predictions"))[-1]
    other.rm(victim)
    again = benchmark(root=ROOT, **PARAMS)
    assert again["shards_computed"] == 1 and again["forward_passes"] == 0  # classify runs no model
    assert other.exists(victim)
    assert_same_metrics(again["metrics"], first["metrics"], 2 * 7)


def test_duckdb_reads_the_s3_results_through_fsspec(runs, capsys):
    _, _, first = runs
    database = local_catalog_path(ROOT)
    assert Path(database).is_file() and fresh_fs().exists(f"{BUCKET}/{PREFIX}/wdys.duckdb")
    with connect(ROOT, database, read_only=True) as con:
        assert_same_metrics(
            con.sql("select * from metrics").to_arrow_table().to_pylist(), first["metrics"], 2 * 7
        )
        assert con.execute("select count(*) from manifest").fetchall() == [(PARAMS["limit"],)]
        httpfs = "select count(*) from duckdb_extensions() where extension_name = 'httpfs' and loaded"
        assert con.execute(httpfs).fetchall() == [(0,)]
    query.main(["--root", ROOT, "select class_weights, components, n from metrics order by all"])
    out = capsys.readouterr().out
    assert out.count("image+description+prediction") == 2 and "template" in out
    assert re.search(rf"│\s+{PARAMS['limit']}\s+│", out)


# A second process with nothing of ours: duckdb and fsspec (s3fs, configured by the environment) open
# the catalog that the run copied next to the results, as the plain `duckdb` command line does with
# httpfs, which cannot be installed here: DuckDB attaches an `s3://` database file only through
# httpfs, so the script copies the file with fsspec, and its views read the shards through fsspec.
ATTACH_SCRIPT = """
import json, os, sys, tempfile
import duckdb, fsspec
fs = fsspec.filesystem("s3")
local = os.path.join(tempfile.mkdtemp(), "wdys.duckdb")
fs.get_file(f"{sys.argv[1]}/wdys.duckdb", local)
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
con.register_filesystem(fs)
con.execute(f"ATTACH '{local}' AS results (READ_ONLY)")
con.execute("USE results")
views = con.sql("select sql from duckdb_views() where database_name = 'results'").fetchall()
metrics = con.sql("select * from metrics").to_arrow_table().to_pylist()
board = con.sql("select count(*) from leaderboard").fetchall()[0][0]
httpfs = con.sql("select count(*) from duckdb_extensions() where extension_name = 'httpfs' and loaded")
ours = ("core", "method", "storage", "sources", "backends", "tasks", "flows", "wdys", "prefect", "torch")
print(json.dumps({
    "views": [v for (v,) in views],
    "metrics": metrics,
    "leaderboard": board,
    "httpfs": httpfs.fetchall()[0][0],
    "imported": sorted({m.split(".")[0] for m in sys.modules} & set(ours)),
}))
"""


def test_the_catalog_beside_the_results_opens_with_duckdb_and_fsspec_alone(runs):
    _, _, first = runs
    done = subprocess.run(
        [sys.executable, "-I", "-c", ATTACH_SCRIPT, ROOT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["imported"] == [] and seen["httpfs"] == 0
    assert_same_metrics(seen["metrics"], first["metrics"], 2 * 7)
    assert seen["leaderboard"] == 2  # one encoder x describer x dataset, two class weightings
    urls = [u for sql in seen["views"] for u in re.findall(r"read_parquet\('([^']+)'", sql)]
    assert len(urls) >= 6 and all(u.startswith(f"{ROOT}/") for u in urls)  # s3:// URLs, as they are


def test_no_credential_is_stored(runs):
    """No object the run wrote (Parquet: raw bytes and decoded values) nor the catalog holds a key."""
    fs = fresh_fs()
    paths = fs.find(f"{BUCKET}/{PREFIX}")
    assert any(p.endswith(".parquet") for p in paths)
    for path in paths:
        data = fs.cat_file(path)
        text = ""
        if path.endswith(".parquet"):
            decoded = pq.read_table(pa.BufferReader(data))
            text = repr(decoded.to_pydict()) + repr(decoded.schema.metadata)
        for secret in (KEY_ID, SECRET):
            assert secret.encode() not in data and secret not in text, path
    catalog = Path(local_catalog_path(ROOT))
    for file in [catalog, *catalog.parent.glob("*")]:
        assert KEY_ID.encode() not in file.read_bytes() and SECRET.encode() not in file.read_bytes()
    with connect(ROOT, str(catalog), read_only=True) as con:
        assert con.execute("select count(*) from duckdb_secrets()").fetchall() == [(0,)]
        views = " ".join(
            sql for (sql,) in con.sql("select sql from duckdb_views() where not internal").fetchall()
        )
        assert ROOT in views and KEY_ID not in views and SECRET not in views


def test_interrupted_serialisation_uploads_nothing(s3, monkeypatch):
    path = f"{UNIT}/broken/shard-00000.parquet"
    real = pq.write_table

    def half_written(table, where, **kwargs):
        whole = pa.BufferOutputStream()
        real(table, whole, **kwargs)
        data = whole.getvalue().to_pybytes()
        where.write(data[: len(data) // 2])
        raise OSError("killed while writing")

    monkeypatch.setattr(sio.pq, "write_table", half_written)
    with pytest.raises(OSError, match="killed while writing"):
        sio.write_table(path, pa.table({"a": list(range(1000))}))
    assert not fresh_fs().exists(path)
    assert not sio.exists(path)


class CuttingProxy:
    """A TCP proxy in front of moto that forwards a request's headers and half of its body, then
    drops both connections: an upload that dies part-way on the wire."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._cut, args=(client,), daemon=True).start()

    def _cut(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            data = b""
            while b"\r\n\r\n" not in data and (chunk := client.recv(65536)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            half = int(length.group(1)) // 2 if length else 0
            if b"100-continue" in head.lower():
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(body) < half and (chunk := client.recv(65536)):
                body += chunk
            upstream.sendall(head + b"\r\n\r\n" + body[:half])
            self.cuts += 1

    def close(self) -> None:
        self.listener.close()


def test_upload_cut_part_way_leaves_no_object(s3, monkeypatch):
    proxy = CuttingProxy(s3)
    path = f"{UNIT}/cut/shard-00000.parquet"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 2)
    s3fs.S3FileSystem.clear_instance_cache()  # the next client talks to the proxy
    try:
        with pytest.raises((OSError, BotoCoreError)):  # the connection dropped, every try
            sio.write_table(path, pa.table({"a": list(range(100_000))}))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        monkeypatch.undo()
        proxy.close()
    assert proxy.cuts >= 1
    assert not fresh_fs().exists(path) and not sio.exists(path)
    # the same write, uncut, lands whole
    sio.write_table(path, pa.table({"a": list(range(100_000))}))
    assert sio.read_table(path).num_rows == 100_000


def test_a_streamed_write_would_leave_a_partial_object(s3):
    """Why write_table does not stream to the store: closing a half-written file publishes it."""
    fs = fresh_fs()
    path = f"{BUCKET}/unit/streamed/shard-00000.parquet"
    with pytest.raises(OSError), fs.open(path, "wb") as f:
        f.write(b"PAR1 half a file")
        raise OSError("killed while writing")
    assert fresh_fs().cat_file(path) == b"PAR1 half a file"


def test_credentials_are_never_part_of_the_root():
    with pytest.raises(ValueError, match="environment") as refused:
        resolve_root("s3://AKIAX:pw-7f3c9a@bucket/prefix")
    assert "pw-7f3c9a" not in str(refused.value)  # the error (logged by Prefect) does not echo it
    assert resolve_root("s3://bucket/prefix/") == "s3://bucket/prefix"


def test_a_file_url_root_is_a_local_root(tmp_path):
    assert resolve_root(f"file://{tmp_path}/data") == f"{tmp_path}/data"
