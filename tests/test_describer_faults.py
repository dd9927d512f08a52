"""Describer faults for real, from a local OpenAI-compatible server on 127.0.0.1 that injects them:
429 with Retry-After, 500, 503, a timeout, a dropped connection, a truncated body, empty content, a
length-capped answer, a refused image, a refused key and an outage. Transient faults are retried and
never stored as answers; a refused item is recorded and its image classified from what it has; a
refused key fails the run at once, writes nothing, and the rerun with the right key asks again."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from backends.inflight import OVERLOAD_RESENDS
from backends.openai_describer import OpenAIDescriber
from flows.benchmark import benchmark

MAX_RETRIES = 2
# image width -> the fault the server injects for that image
FIRST_429, FIRST_500, FIRST_503, FIRST_TIMEOUT, FIRST_DROP, FIRST_TRUNCATED = 40, 41, 42, 43, 44, 45
ALWAYS_EMPTY, ALWAYS_503, LENGTH_CAPPED, ALWAYS_400 = 46, 47, 48, 49
GOOD_KEY = "sk-sentinel-faults"
QUOTA_ERROR = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "code": "insufficient_quota",
}
REPO = Path(__file__).resolve().parents[1]


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.lock = threading.Lock()
        self.attempts: Counter[tuple[str, int | None]] = Counter()
        self.first_seen: dict[tuple[str, int | None], float] = {}
        self.last_seen: dict[tuple[str, int | None], float] = {}
        self.answered: Counter[tuple[str, int | None]] = Counter()  # successful answers per item
        self.outage: tuple[float, float] | None = None  # monotonic window in which every request gets 503
        self.outage_after: int | None = None  # or: the window opens after this many answers
        self.outage_s = 0.0
        self.quota: int | None = None  # the key's credit: 402 insufficient_quota once this many are answered
        self.charged = 0  # requests admitted against `quota`


class FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        text = (
            content if isinstance(content, str) else next(p["text"] for p in content if p["type"] == "text")
        )
        url = (
            None
            if isinstance(content, str)
            else next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
        )
        width = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).width if url else None
        key = (text[:60], width)
        srv = self.server
        with srv.lock:
            srv.attempts[key] += 1
            attempt = srv.attempts[key]
            now = time.monotonic()
            srv.first_seen.setdefault(key, now)
            srv.last_seen[key] = now
            if (
                srv.outage is None
                and srv.outage_after is not None
                and sum(srv.answered.values()) >= srv.outage_after
            ):
                srv.outage = (now, now + srv.outage_s)
            down = srv.outage is not None and srv.outage[0] <= now < srv.outage[1]
            # a credit is taken as the request is admitted, so concurrent requests never overdraw it
            spent = srv.quota is not None and srv.charged >= srv.quota
            signed = self.headers.get("Authorization") == f"Bearer {GOOD_KEY}"
            srv.charged += not spent and not down and signed
        fast = {"retry-after-ms": "5"}
        first = attempt == 1
        if self.headers.get("Authorization") != f"Bearer {GOOD_KEY}":
            return self.send(
                401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
            )
        if down:
            return self.send(503, {"error": {"message": "overloaded"}}, fast)
        if spent:
            return self.send(402, {"error": QUOTA_ERROR})
        if width == ALWAYS_400:
            return self.send(400, {"error": {"message": "this image was refused by the content filter"}})
        if width == FIRST_429 and first:
            return self.send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        if (width == FIRST_500 and first) or (width == FIRST_503 and first) or width == ALWAYS_503:
            return self.send(500 if width == FIRST_500 else 503, {"error": {"message": "unavailable"}}, fast)
        if width == FIRST_TIMEOUT and first:
            time.sleep(1.5)  # the client gave up after 1 s
            return None
        if width == FIRST_DROP and first:
            self.close_connection = True
            self.connection.shutdown(2)  # no response at all
            return None
        answer = "a cat" if "class labels" in text else "I see an animal on a plain background."
        if width == ALWAYS_EMPTY:
            answer = ""
        reason = "length" if width == LENGTH_CAPPED else "stop"
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": reason}
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }  # fmt: skip
        if width == FIRST_TRUNCATED and first:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # half a body, then the connection closes
            self.close_connection = True
            return None
        with srv.lock:
            srv.answered[key] += 1
        return self.send(200, payload)

    def send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fault_server(monkeypatch):
    server = FaultServer()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", str(MAX_RETRIES))
    monkeypatch.setenv("WDYS_OPENAI_TIMEOUT_S", "1")
    yield server
    server.shutdown()
    server.server_close()


def image(width: int) -> Image.Image:
    return Image.new("RGB", (width, 32), (120, 80, 40))


def test_transient_faults_are_retried_and_permanent_ones_recorded(fault_server):
    describer = OpenAIDescriber.load("fault-model")
    transient = [FIRST_429, FIRST_500, FIRST_503, FIRST_TIMEOUT, FIRST_DROP, FIRST_TRUNCATED]
    widths = [*transient, ALWAYS_EMPTY, ALWAYS_503, LENGTH_CAPPED, ALWAYS_400]
    answers = dict(
        zip(widths, describer.describe([image(w) for w in widths], "What do you see?"), strict=True)
    )
    attempts = {w: n for (_, w), n in fault_server.attempts.items()}
    for w in transient:
        assert answers[w].error is None and answers[w].text, (w, answers[w])
        assert attempts[w] == 2, (w, attempts[w])  # one fault, one retry
    key_429 = ("What do you see?", FIRST_429)
    assert (
        fault_server.last_seen[key_429] - fault_server.first_seen[key_429] >= 0.9
    )  # Retry-After: 1 honoured
    assert answers[ALWAYS_503].text is None and "503" in answers[ALWAYS_503].error
    assert answers[ALWAYS_503].retryable  # transient: asked again later, never stored
    # bounded: the client's attempts, each resent at most OVERLOAD_RESENDS times when the server
    # refused it among others in flight (backends/inflight.py)
    assert MAX_RETRIES + 1 <= attempts[ALWAYS_503] <= (MAX_RETRIES + 1) * (OVERLOAD_RESENDS + 1)
    assert answers[ALWAYS_EMPTY].text is None and not answers[ALWAYS_EMPTY].retryable
    assert answers[LENGTH_CAPPED].text and answers[LENGTH_CAPPED].error is None  # kept, marked cut
    assert answers[LENGTH_CAPPED].truncated and answers[LENGTH_CAPPED].completion_tokens == 7
    assert answers[ALWAYS_400].error and "content filter" in answers[ALWAYS_400].error
    assert not answers[ALWAYS_400].retryable and attempts[ALWAYS_400] == 1  # refused: not retried
    assert all(GOOD_KEY not in (a.error or "") for a in answers.values())


def parquet_dataset(folder: Path, widths: list[int]) -> str:
    """A two-class Hugging Face Parquet split whose images the server tells apart by their width."""
    rows = [{"bytes": _jpeg(image(w)), "path": f"{i}.jpg"} for i, w in enumerate(widths)]
    table = pa.table({"img": rows, "label": pa.array([i % 2 for i in range(len(widths))], pa.int64())})
    meta = {"info": {"features": {"label": {"names": ["cat", "dog"]}}}}
    folder.mkdir()
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), folder / "test.parquet")
    return f"parquet:{folder}"


def test_an_image_whose_answers_failed_is_classified_from_what_exists(prefect_server, fault_server, tmp_path):
    dataset = parquet_dataset(tmp_path / "data", [32, 33, 34, ALWAYS_400, 35, 36])
    root = tmp_path / "root"
    result = benchmark(
        datasets=[dataset], splits=["test"], describers=["openai:fault-e2e"],
        class_weights=["name"], root=str(root), class_samples=1,
    )  # fmt: skip
    excluded = {r["components"]: (r["n"], r["excluded"], r["partial"]) for r in result["metrics"]}
    for components, (n, out, partial) in excluded.items():
        # the failed image keeps its image component; without it, it has nothing and is excluded;
        # with it and an answer component, its query is partial (counted in n and in partial)
        assert (n, out) == ((6, 0) if "image" in components else (5, 1)), components
        assert partial == ("image" in components and components != "image"), components
    with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
        failed = con.sql("select image_id, kind, error from descriptions where error is not null").fetchall()
    assert {(i, k) for i, k, _ in failed} == {("test/0000003", "description"), ("test/0000003", "prediction")}
    assert all("content filter" in e for _, _, e in failed)


def _jpeg(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG")
    return buffer.getvalue()


def error_rows(root: Path) -> int:
    with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
        return con.execute("select count(*) from descriptions where error is not null").fetchall()[0][0]


def test_a_refused_key_fails_at_once_and_is_never_cached(prefect_server, fault_server, tmp_path):
    """The acceptance run: `--describers openai:m --limit 16` against a server that answers 401 exits
    non-zero within 2 minutes, says 401 and what to check, and writes no descriptions; the rerun
    with the right key asks the server, finishes and has no error rows."""
    root = tmp_path / "root"
    command = [sys.executable, "-m", "flows.benchmark", "--describers", "openai:m", "--limit", "16"]
    command += ["--shard-size", "8", "--root", str(root)]
    env = {**os.environ, "OPENAI_API_KEY": "sk-wrong-key", "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL"}
    env.pop("PREFECT_API_URL", None)  # its own temporary server, as a user's first run
    started = time.monotonic()
    failed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    elapsed = time.monotonic() - started

    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and elapsed < 120, (failed.returncode, elapsed)
    assert re.search(r"\b401\b", output) and "OPENAI_API_KEY" in output
    assert "sk-wrong-key" not in output
    assert not list(root.glob("descriptions/**/*.parquet")) and not list(
        root.glob("class_descriptions/**/*.parquet")
    )
    assert not list(root.rglob("*.pending.parquet"))
    asked_before = sum(fault_server.attempts.values())

    result = benchmark(describers=["openai:m"], limit=16, shard_size=8, root=str(root))

    assert sum(fault_server.attempts.values()) > asked_before  # asked again, not read from a cache
    assert result["shards_computed"] > 0 and error_rows(root) == 0


def sixteen_images(tmp_path: Path, describer: str, shard_size: int) -> dict:
    """The benchmark's arguments for 16 images the server tells apart, stored under tmp_path/root."""
    dataset = parquet_dataset(tmp_path / "data", list(range(60, 76)))
    return dict(
        datasets=[dataset], splits=["test"], describers=[describer], class_weights=["name"],
        root=str(tmp_path / "root"), shard_size=shard_size,
    )  # fmt: skip


@pytest.mark.slow
def test_a_30s_outage_mid_run_is_survived_without_asking_twice(
    prefect_server, fault_server, tmp_path, monkeypatch
):
    """Every request fails with 503 for 30 s once 12 answers are in. The client's retries give up;
    the task keeps its final answers aside and its retries ask only the missing items, so the run
    finishes with no error rows, and no item that had been answered is asked again."""
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "1")
    fault_server.outage_after, fault_server.outage_s = 12, 30.0
    root = tmp_path / "root"

    result = benchmark(**sixteen_images(tmp_path, "openai:outage", shard_size=4))

    assert fault_server.outage is not None  # the outage did happen mid-run
    assert result["shards_computed"] > 0 and error_rows(root) == 0
    assert all(r["excluded"] == 0 for r in result["metrics"])
    assert max(fault_server.answered.values()) == 1  # nothing that succeeded was asked twice
    assert len(fault_server.answered) == 16 * 2  # every image's description and guess


def stored_answers(root: Path) -> list[dict]:
    """Every answer row of every published shard, read from the files themselves."""
    shards = sorted(root.glob("descriptions/**/shard-*.parquet"))
    return [row for shard in shards for row in pq.read_table(shard).to_pylist()]


def test_quota_running_out_mid_shard_stores_nothing_of_that_shard(prefect_server, fault_server, tmp_path):
    """The key's credit runs out after 12 answers (402 insufficient_quota for every later request):
    the run fails with the reason, no published shard holds a quota error and the half-done shards
    are not published, their answers kept pending; the rerun, with credit again, asks exactly the
    items never answered and stores no error."""
    from backends import registry

    fault_server.quota = 12
    root = tmp_path / "root"
    run = sixteen_images(tmp_path, "openai:quota", shard_size=8)

    with pytest.raises(Exception, match=r"402") as info:
        benchmark(**run)

    assert "quota" in str(info.value) and "billing" in str(info.value) and GOOD_KEY not in str(info.value)
    first = stored_answers(root)
    assert all(r["error"] is None and r["text"] for r in first)
    assert len(first) < 2 * 16  # the shards the quota cut short were not published
    assert not any(pq.read_table(f).column("error").null_count < pq.read_table(f).num_rows
                   for f in root.rglob(".*.pending.parquet"))  # fmt: skip
    answered_before = sum(fault_server.answered.values())

    fault_server.quota = None  # credit again, same key, same endpoint, in the same process: the
    assert registry._load_describer.cache_info().currsize  # describer that met the 402 is asked again
    result = benchmark(**run)

    stored = stored_answers(root)
    assert len(stored) == 2 * 16 and all(r["error"] is None and r["text"] for r in stored)
    # the answers got before the credit ran out were kept (in the pending files): the rerun asks
    # exactly the total minus those, nothing twice
    assert answered_before == 12 and sum(fault_server.answered.values()) - answered_before == 2 * 16 - 12
    assert max(fault_server.answered.values()) == 1
    assert all(r["excluded"] == 0 for r in result["metrics"]) and error_rows(root) == 0
