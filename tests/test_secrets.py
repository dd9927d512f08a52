"""Secrets: the benchmark runs on an S3 root (moto) with an OpenAI-compatible describer (a local
server on 127.0.0.1 that echoes the request's Authorization header back in its error responses),
with sentinel values for OPENAI_API_KEY, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. No sentinel
appears in any log record (every logger at DEBUG), in what the run printed, in the flow run's
parameters, task runs, logs or artifacts as the Prefect API returns them, in Prefect's database, in
any object under the root (Parquet shards read raw and decoded, the report) or in the local
catalog. A root URL that holds credentials is refused, and `storage.query` opens the catalog
read-only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from runs import tiny_run
from s3_support import moto_s3

from core.errors import UserError
from flows.benchmark import benchmark
from storage import query
from storage.connection import local_catalog_path
from storage.paths import resolve_root

REPO = Path(__file__).resolve().parents[1]
TAG = uuid.uuid4().hex[:12].upper()  # unique per session: nothing left by another test can match
OPENAI_KEY = f"sk-SENTINEL-openai-{TAG}"
KEY_ID = f"AKIASENTINEL{TAG[:8]}"
SECRET = f"SENTINEL-aws-secret-{TAG}"
SENTINELS = (OPENAI_KEY, KEY_ID, SECRET)
BUCKET = "wdys-secrets"
ROOT = f"s3://{BUCKET}/run"
DESCRIBER = "openai:secrets-echo-model"
PARAMS = tiny_run(seed=3, class_weights=["name", "descriptions"], describers=[DESCRIBER])
DEBUG_LOGGERS = ("", "prefect", "prefect.extra", "prefect._internal", "wdys", "openai", "httpx",
                 "httpcore", "s3fs", "fsspec", "aiobotocore", "botocore", "urllib3")  # fmt: skip


def leaks(blob: bytes | str) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [s for s in SENTINELS if s.encode() in data]


# ---------------------------------------------------------------------------------------------
# A chat-completions server that echoes the caller's Authorization header when it fails


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.lock = threading.Lock()
        self.requests = 0
        self.echoed = 0
        self.authorized = 0  # requests that carried the sentinel key: the key did reach the server
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        with self.server.lock:
            self.server.requests += 1
            n = self.server.requests
            self.server.authorized += OPENAI_KEY in auth
        content = body["messages"][0]["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        if n % 5 == 2:  # a permanent error (not retried) that quotes the credentials it was sent
            with self.server.lock:
                self.server.echoed += 1
            message = f"invalid request from {auth!r}; headers: {dict(self.headers)!r}"
            return self.send(400, {"error": {"message": message, "type": "invalid_request_error"}})
        if n % 5 == 4:  # a transient one, retried: its echo must not reach a log either
            with self.server.lock:
                self.server.echoed += 1
            return self.send(503, {"error": {"message": f"overloaded, key {auth}"}}, retry_ms="5")
        answer = "a cat" if "class labels" in text else "I see a small animal on a plain background."
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }  # fmt: skip
        return self.send(200, payload)

    def send(self, status: int, payload: dict, retry_ms: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_ms:
            self.send_header("retry-after-ms", retry_ms)
        self.end_headers()
        self.wfile.write(data)


# ---------------------------------------------------------------------------------------------
# The run, and everything it left


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + repr(getattr(record, "args", None)))
        except Exception as exc:  # noqa: BLE001 - a record that cannot be formatted is kept as such
            self.lines.append(f"{record.name} unformattable: {exc!r}")


@contextlib.contextmanager
def everything_logged() -> Records:
    """Every logger that the run touches at DEBUG, into one handler (on the loggers that do not
    propagate too); restored afterwards."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in DEBUG_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    for name in ("", "prefect.extra", "prefect._internal"):
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in ("", "prefect.extra", "prefect._internal"):
            logging.getLogger(name).removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class Run:
    result: dict
    flow_run_id: str
    log_lines: list[str]
    printed: str
    api: dict[str, str] = field(default_factory=dict)  # what the Prefect API returns, as JSON
    objects: dict[str, bytes] = field(default_factory=dict)  # every object under the root
    catalog: dict[str, bytes] = field(default_factory=dict)  # every file of the local catalog
    prefect_db: dict[str, bytes] = field(default_factory=dict)
    server: EchoServer | None = None


async def read_api(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        task_runs = await client.read_task_runs(flow_run_filter=runs)
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {
        "parameters": json.dumps(flow_run.parameters),
        "flow_run": flow_run.model_dump_json(),
        "task_runs": json.dumps([t.model_dump(mode="json") for t in task_runs]),
        "logs": json.dumps([log.model_dump(mode="json") for log in logs]),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts]),
        "log_count": str(len(logs)),
        "artifact_keys": json.dumps(sorted(a.key or "" for a in artifacts)),
    }


@pytest.fixture(scope="module")
def sentinel_env(tmp_path_factory):
    """moto's S3 server and the echo server on 127.0.0.1; the environment holds sentinel secrets."""
    with moto_s3(tmp_path_factory, KEY_ID, SECRET, BUCKET) as (_, mp):
        echo = EchoServer()
        mp.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{echo.server_address[1]}/v1")
        mp.setenv("OPENAI_API_KEY", OPENAI_KEY)
        mp.setenv("WDYS_OPENAI_MAX_RETRIES", "2")
        mp.setenv("WDYS_OPENAI_TIMEOUT_S", "10")
        try:
            yield echo
        finally:
            echo.close()


@pytest.fixture(scope="module")
def run(sentinel_env, prefect_server) -> Run:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    out, err = io.StringIO(), io.StringIO()
    with everything_logged() as records, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        state = benchmark(root=ROOT, **PARAMS, return_state=True)
        APILogWorker.drain_all(timeout=30)  # every log and event is on the server before it is read
        EventsWorker.drain_all(timeout=30)
    flow_run_id = str(state.state_details.flow_run_id)
    result = state.result()
    done = Run(result, flow_run_id, records.lines, out.getvalue() + err.getvalue(), server=sentinel_env)
    done.api = asyncio.run(read_api(flow_run_id))
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    done.objects = {p: fs.cat_file(p) for p in fs.find(f"{BUCKET}/")}
    catalog_dir = Path(local_catalog_path(ROOT)).parent
    done.catalog = {str(p): p.read_bytes() for p in catalog_dir.rglob("*") if p.is_file()}
    database = urlsplit(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().replace("+aiosqlite", "")).path
    done.prefect_db = {p: Path(p).read_bytes() for p in (database, database + "-wal") if Path(p).is_file()}
    return done


# ---------------------------------------------------------------------------------------------
# Tests


def test_the_run_used_the_secrets_and_the_server_echoed_them(run):
    """The scans below mean something: the key reached the server, which quoted it back in errors
    that the run recorded, and the run finished."""
    server = run.server
    assert server.authorized == server.requests > 0 and server.echoed >= 2
    assert run.result["shards_computed"] > 0 and len(run.result["metrics"]) == 2 * 7
    errors = [
        text
        for path, data in run.objects.items()
        if "/descriptions/" in path or "/class_descriptions/" in path
        for text in pq.read_table(pa.BufferReader(data)).column("error").to_pylist()
        if text
    ]
    assert errors and any("400" in e for e in errors), errors  # the echoing error was recorded
    assert any("Bearer ***" in e for e in errors), errors  # ... with the key scrubbed
    assert run.log_lines and run.printed and int(run.api["log_count"]) > 0


def wire_dump(line: str) -> bool:
    """botocore's own DEBUG dump of a signed request: its Authorization header names the access key
    id (never the secret key, which is not sent). Off unless botocore's logger is set to DEBUG."""
    return line.startswith(("botocore.", "aiobotocore.")) and " DEBUG " in line


def test_no_secret_in_any_log_record_or_output(run):
    assert any(wire_dump(line) for line in run.log_lines)  # DEBUG was on everywhere
    for line in run.log_lines:
        found = leaks(line)
        if wire_dump(line) and KEY_ID in found:  # the only place the key id may appear ...
            assert line.count(KEY_ID) == line.count(f"Credential={KEY_ID}/"), line[:500]
            found.remove(KEY_ID)
        assert not found, line[:500]  # ... and neither the secret key nor the API key ever does
    assert not leaks(run.printed)


def test_no_secret_in_the_flow_runs_parameters_logs_or_artifacts(run):
    params = json.loads(run.api["parameters"])
    assert params["root"] == ROOT and params["describers"] == [DESCRIBER]
    assert set(json.loads(run.api["artifact_keys"])) >= {"wdys-metrics", "wdys-report", "wdys-gains"}
    for what in ("parameters", "flow_run", "task_runs", "logs", "artifacts"):
        assert not leaks(run.api[what]), what
    assert run.prefect_db  # the server's database, events and states included
    for path, data in run.prefect_db.items():
        assert not leaks(data), path


def test_no_secret_in_any_object_or_the_catalog(run):
    assert any(p.endswith(".parquet") for p in run.objects)
    assert any("/reports/" in p for p in run.objects)
    for path, data in run.objects.items():
        assert not leaks(data), path
        if path.endswith(".parquet"):  # compressed pages: decode them too
            table = pq.read_table(pa.BufferReader(data))
            assert not leaks(repr(table.to_pylist()) + repr(table.schema.metadata)), path
    assert run.catalog
    for path, data in run.catalog.items():
        assert not leaks(data), path
    with duckdb.connect(local_catalog_path(ROOT), read_only=True) as con:
        views = con.sql("select sql from duckdb_views() where not internal").fetchall()
        assert not leaks(repr(views)) and ROOT in repr(views)


def test_a_root_with_credentials_is_refused_without_echoing_them():
    for url in (f"s3://{KEY_ID}:{SECRET}@bucket/prefix", f"https://user:{SECRET}@example.com/data"):
        with pytest.raises(ValueError, match="credentials") as refused:
            resolve_root(url)
        assert not leaks(str(refused.value))


def test_the_command_line_refuses_a_root_with_credentials_before_a_run_records_it(sentinel_env, api_env):
    """The server stores a flow run's parameters as they are given, before the flow checks them:
    the command line must refuse such a root before it creates a run."""
    secret = f"SENTINEL-cli-{TAG}"
    done = subprocess.run(
        [sys.executable, "-m", "flows.benchmark", "--root", f"s3://{KEY_ID}:{secret}@{BUCKET}/x",
         "--limit", "4", "--class-weights", "name"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **api_env},
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "credentials" in output, output[-2000:]
    assert secret not in output, output[-2000:]
    recorded = asyncio.run(all_flow_run_parameters())
    assert secret not in recorded


async def all_flow_run_parameters() -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs(limit=200)
    return json.dumps([r.parameters for r in runs])


@pytest.fixture(scope="module")
def api_env(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}


def test_ad_hoc_sql_opens_the_catalog_read_only(run, capsys):
    database = Path(local_catalog_path(ROOT))
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    with duckdb.connect(str(database), read_only=True) as con:
        views = con.sql("select view_name from duckdb_views() where not internal order by 1").fetchall()
    for sql in ("create table x as select 1", "create or replace view metrics as select 1 as n",
                "drop view metrics", "create schema s", "comment on view metrics is 'x'"):  # fmt: skip
        with pytest.raises(UserError, match="read-only"):  # one line, no traceback
            query.main(["--root", ROOT, sql])
    query.main(["--root", ROOT, "select count(*) as n from manifest"])
    assert "8" in capsys.readouterr().out  # reads still work
    cli = subprocess.run(
        [sys.executable, "-m", "storage.query", "--root", ROOT, "create table x as select 1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode != 0 and "read-only" in cli.stderr, cli.stderr[-2000:]
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before
    with duckdb.connect(str(database), read_only=True) as con:
        assert (
            con.sql("select view_name from duckdb_views() where not internal order by 1").fetchall() == views
        )
        assert con.sql("select count(*) from duckdb_tables()").fetchall() == [(0,)]
