"""Storage faults on S3, for real: moto's S3 server behind an HTTP proxy on 127.0.0.1 that answers
some requests with 500 / 503 SlowDown (S3 XML error bodies) and delays others. The benchmark's
requests are retried and it finishes with the metrics of a clean run; a watcher that lists the
bucket all along never sees an object that is not a whole Parquet file; and two benchmark processes
on the same root at the same time both finish, with the same metrics, and leave exactly the objects
of one run, each whole and with the predictions of a single run."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from runs import assert_same_metrics, cli_args, tiny_run
from s3_support import moto_s3

from flows.benchmark import benchmark
from storage import io as sio
from storage.connection import connect, local_catalog_path
from tasks.evaluate import format_table

REPO = Path(__file__).resolve().parents[1]
BUCKET = "wdys-faults"
CLEAN, FAULTY, SHARED = (f"s3://{BUCKET}/{name}" for name in ("clean", "faulty", "shared"))
PARAMS = tiny_run(seed=2, class_weights=["name"])
ARGS = cli_args(PARAMS)
SHARD_TABLES = {
    "manifest",
    "descriptions",
    "image_embeddings",
    "text_embeddings",
    "class_weights",
    "predictions",
}


# ---------------------------------------------------------------------------------------------
# The faulty proxy


def s3_error(code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by the test proxy</Message><RequestId>wdys-fault</RequestId></Error>"
    ).encode()


class FaultProxy(ThreadingHTTPServer):
    """Forwards every request to moto, except on a schedule counted per HTTP method: every 3rd PUT
    is answered 503 SlowDown, every 15th GET 500 InternalError and every 7th HEAD 503 (no body);
    every 8th GET is delayed by 0.2 s. A retry is a new request, so each fault happens once."""

    daemon_threads = True
    HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te"}

    def __init__(self, target_port: int) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.target_port = target_port
        self.port = self.server_address[1]
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.injected: Counter[tuple[str, int]] = Counter()
        self.delayed = 0
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fault(self, method: str) -> tuple[int | None, str, float]:
        """(status to answer instead of forwarding, its error code, seconds to wait first)."""
        with self.lock:
            self.requests[method] += 1
            n = self.requests[method]
            status, code, delay = None, "", 0.0
            if method == "PUT" and n % 3 == 0:
                status, code = 503, "SlowDown"
            elif method == "GET" and n % 15 == 0:
                status, code = 500, "InternalError"
            elif method == "HEAD" and n % 7 == 0:
                status, code = 503, "ServiceUnavailable"
            elif method == "GET" and n % 8 == 0:
                delay = 0.2
            if status:
                self.injected[(method, status)] += 1
            if delay:
                self.delayed += 1
            return status, code, delay

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` is answered
    server: FaultProxy

    def log_message(self, *args: object) -> None:
        pass

    def body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return data
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def forward(self) -> None:
        body = self.body()
        status, code, delay = self.server.fault(self.command)
        if delay:
            time.sleep(delay)
        if status:
            data = b"" if self.command == "HEAD" else s3_error(code)
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in FaultProxy.HOP_BY_HOP}
        headers.pop("Content-Length", None)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.target_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() in FaultProxy.HOP_BY_HOP or name.lower() == "content-length":
                    continue
                self.send_header(name, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, the fault proxy in front of it, and an environment that points
    every AWS client at moto directly (tests switch AWS_ENDPOINT_URL to the proxy)."""
    with moto_s3(tmp_path_factory, "AKIAWDYSFAULTS000001", "wdys-faults-secret", BUCKET) as (port, _):
        proxy = FaultProxy(port)
        try:
            yield port, proxy
        finally:
            proxy.close()


def direct(port: int) -> s3fs.S3FileSystem:
    """A client of moto itself, not of the proxy, with no listing cache."""
    return s3fs.S3FileSystem(
        endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True, use_listings_cache=False
    )


@pytest.fixture(scope="module")
def clean_run(s3, prefect_server):
    """The reference: the same benchmark straight to moto, no faults."""
    return benchmark(root=CLEAN, **PARAMS)


@pytest.fixture
def through_proxy(s3, monkeypatch):
    """Every S3 client made from now on talks to the fault proxy."""
    _, proxy = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    s3fs.S3FileSystem.clear_instance_cache()
    yield proxy
    s3fs.S3FileSystem.clear_instance_cache()


class Watcher(threading.Thread):
    """Lists the root on moto every 50 ms and reads every new object whole: a partial or corrupt
    shard (or any object under a shard table that is not Parquet) would fail to parse. It keeps the
    ETag each object had when it first appeared, to tell whether it ever changed afterwards."""

    def __init__(self, port: int, root: str) -> None:
        super().__init__(daemon=True)
        self.fs, self.prefix = direct(port), root.removeprefix("s3://")
        self.seen: dict[str, str] = {}  # path -> ETag when first seen
        self.broken: list[tuple[str, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.scan()
            time.sleep(0.05)
        self.scan()

    def scan(self) -> None:
        try:
            listing = self.fs.find(self.prefix, detail=True)
        except FileNotFoundError:
            return
        for path, info in listing.items():
            if path in self.seen or path.removeprefix(self.prefix + "/").split("/", 1)[0] not in SHARD_TABLES:
                continue
            if path.rpartition("/")[2].startswith("."):  # a pending file: rewritten as answers arrive
                continue
            self.seen[path] = info["ETag"]
            try:
                pq.read_table(pa.BufferReader(self.fs.cat_file(path)))
            except Exception as exc:  # noqa: BLE001 - any failure to parse is the finding
                self.broken.append((path, repr(exc)))

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(30)

    def changed(self) -> list[str]:
        """Objects whose content is not what it was when they first appeared."""
        now = self.fs.find(self.prefix, detail=True)
        return [p for p, etag in self.seen.items() if now[p]["ETag"] != etag]


def shard_objects(fs: s3fs.S3FileSystem, root: str) -> dict[str, bytes]:
    """Every object under the root's shard tables, by key relative to the root."""
    prefix = root.removeprefix("s3://") + "/"
    return {
        p.removeprefix(prefix): fs.cat_file(p)
        for p in fs.find(prefix)
        if p.removeprefix(prefix).split("/", 1)[0] in SHARD_TABLES
        and not p.rpartition("/")[2].startswith(".")
    }


def open_uploads(port: int) -> list[str]:
    """Multipart uploads begun and never completed or aborted: invisible, but partial data."""
    uploads = direct(port).call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads", [])
    return [u["Key"] for u in uploads]


# ---------------------------------------------------------------------------------------------
# Tests


def test_faults_are_retried_and_no_partial_object_is_ever_visible(s3, clean_run, through_proxy):
    port, proxy = s3
    before = sum(proxy.injected.values())
    with Watcher(port, FAULTY) as watcher:
        faulty = benchmark(root=FAULTY, **PARAMS)
    injected = dict(proxy.injected)
    assert sum(injected.values()) > before and proxy.delayed, (injected, proxy.delayed)
    assert {("PUT", 503), ("GET", 500), ("HEAD", 503)} <= injected.keys(), injected
    assert faulty["shards_computed"] == clean_run["shards_computed"] > 0 and faulty["shards_cached"] == 0
    assert_same_metrics(faulty["metrics"], clean_run["metrics"], 7)
    assert watcher.broken == []
    objects = shard_objects(direct(port), FAULTY)
    assert watcher.seen.keys() == {f"{BUCKET}/faulty/{k}" for k in objects}  # it saw every shard, whole
    assert watcher.changed() == []
    assert objects.keys() == shard_objects(direct(port), CLEAN).keys()
    assert open_uploads(port) == []  # no multipart upload left behind either


def test_a_visible_shard_is_never_replaced(s3, through_proxy, tmp_path):
    """Shard writes are exclusive: when two runs write the same shard, the first one stays, so a
    reader that listed it never finds it changed (on S3 a conditional PUT, retried through faults)."""
    local = str(tmp_path / "shard-00000.parquet")
    for path in (f"s3://{BUCKET}/unit/exclusive/shard-00000.parquet", local):
        assert sio.write_table(path, pa.table({"a": [1]}), exclusive=True)
        assert not sio.write_table(path, pa.table({"a": [2, 3]}), exclusive=True)
        assert sio.read_table(path).column("a").to_pylist() == [1]
        assert sio.write_table(path, pa.table({"a": [2, 3]}))  # a plain write still replaces
        assert sio.read_table(path).column("a").to_pylist() == [2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.parquet"]  # no temp file left


@pytest.fixture(scope="module")
def api_env(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}


def printed_metrics(out: str) -> str:
    """The metrics table a run printed: from its header to the 'shards computed' line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("dataset "))
    end = next(i for i, line in enumerate(lines) if line.startswith("shards computed"))
    return "\n".join(line.rstrip() for line in lines[start:end])


def test_two_runs_on_one_root_at_once_leave_one_runs_objects(s3, clean_run, through_proxy, api_env, tmp_path):
    port, proxy = s3
    env = {**os.environ, **api_env}  # AWS_ENDPOINT_URL: the proxy, so faults hit both runs
    before = sum(proxy.injected.values())
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    with Watcher(port, SHARED) as watcher:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flows.benchmark", *ARGS, "--root", SHARED],
                cwd=REPO,
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
            for log in logs
        ]
        try:
            codes = [p.wait(240) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
    outs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n=====\n".join(out[-3000:] for out in outs)
    assert sum(proxy.injected.values()) > before

    # each run saw every shard, computed by itself or by the other one (often both: a race that the
    # exclusive write settles, first writer wins)
    counts = [re.search(r"shards computed: (\d+), read from cache: (\d+)", out).groups() for out in outs]
    assert [int(a) + int(b) for a, b in counts] == [clean_run["shards_computed"]] * 2, counts

    # both print the metrics of the single clean run
    expected = "\n".join(line.rstrip() for line in format_table(clean_run["metrics"]).splitlines())
    assert [printed_metrics(out) for out in outs] == [expected, expected]
    with connect(SHARED, local_catalog_path(SHARED), read_only=True) as con:
        assert_same_metrics(
            con.sql("select * from metrics").to_arrow_table().to_pylist(), clean_run["metrics"], 7
        )

    # exactly the objects of one run, each whole; the predictions equal the single run's
    assert watcher.broken == [] and watcher.seen
    assert watcher.changed() == []  # a shard, once visible, was never replaced by the other run
    ours, single = shard_objects(direct(port), SHARED), shard_objects(direct(port), CLEAN)
    assert sorted(ours) == sorted(single) and open_uploads(port) == []
    tables = {k: pq.read_table(pa.BufferReader(data)) for k, data in ours.items()}
    predictions = [k for k in ours if k.startswith("predictions/")]
    assert len(predictions) == PARAMS["limit"] // PARAMS["shard_size"]
    for k in predictions:
        mine, reference = tables[k], pq.read_table(pa.BufferReader(single[k]))
        for column in ("image_id", "label", "components", "top5"):  # the predictions themselves: equal
            assert mine.column(column).equals(reference.column(column)), (k, column)
        # Scores to float32 rounding: the reference ran inside this test process, whose torch thread
        # settings earlier tests may have changed; the subprocesses sum in their own order.
        np.testing.assert_allclose(
            np.array(mine.column("scores").to_pylist(), dtype=float),
            np.array(reference.column("scores").to_pylist(), dtype=float),
            rtol=0,
            atol=1e-6,
            err_msg=k,
        )
