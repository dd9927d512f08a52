"""Describer faults for real, from a local OpenAI-compatible server on 127.0.0.1 that injects them:
429 with Retry-After, 500, 503, a timeout, a dropped connection, a truncated body, empty content and
a length-capped answer. Transient faults are retried (bounded, with backoff) and recovered; a
permanent one is recorded per image, and that image is classified from the components it has."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from backends.openai_describer import OpenAIDescriber
from flows.benchmark import benchmark

MAX_RETRIES = 2
# image width -> the fault the server injects for that image
FIRST_429, FIRST_500, FIRST_503, FIRST_TIMEOUT, FIRST_DROP, FIRST_TRUNCATED = 40, 41, 42, 43, 44, 45
ALWAYS_EMPTY, ALWAYS_503, LENGTH_CAPPED = 46, 47, 48


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.lock = threading.Lock()
        self.attempts: Counter[tuple[str, int | None]] = Counter()
        self.first_seen: dict[tuple[str, int | None], float] = {}
        self.last_seen: dict[tuple[str, int | None], float] = {}


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
        key = (text[:20], width)
        with self.server.lock:
            self.server.attempts[key] += 1
            attempt = self.server.attempts[key]
            self.server.first_seen.setdefault(key, time.monotonic())
            self.server.last_seen[key] = time.monotonic()
        fast = {"retry-after-ms": "5"}
        first = attempt == 1
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
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sentinel-faults")
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
    widths = [*transient, ALWAYS_EMPTY, ALWAYS_503, LENGTH_CAPPED]
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
    assert attempts[ALWAYS_503] == MAX_RETRIES + 1  # bounded
    assert answers[ALWAYS_EMPTY].text is None and answers[ALWAYS_EMPTY].error == "empty answer"
    assert (
        answers[LENGTH_CAPPED].text and answers[LENGTH_CAPPED].error is None
    )  # a capped answer is an answer
    assert answers[LENGTH_CAPPED].completion_tokens == 7
    assert all("sk-sentinel-faults" not in (a.error or "") for a in answers.values())


def test_an_image_whose_answers_failed_is_classified_from_what_exists(prefect_server, fault_server, tmp_path):
    widths = [32, 33, 34, ALWAYS_503, 35, 36]
    rows = [{"bytes": _jpeg(image(w)), "path": f"{i}.jpg"} for i, w in enumerate(widths)]
    table = pa.table({"img": rows, "label": pa.array([i % 2 for i in range(len(widths))], pa.int64())})
    meta = {"info": {"features": {"label": {"names": ["cat", "dog"]}}}}
    (tmp_path / "data").mkdir()
    pq.write_table(
        table.replace_schema_metadata({"huggingface": json.dumps(meta)}), tmp_path / "data" / "test.parquet"
    )
    root = tmp_path / "root"
    result = benchmark(
        datasets=[f"parquet:{tmp_path / 'data'}"], splits=["test"], describers=["openai:fault-e2e"],
        class_weights=["name"], root=str(root), class_samples=1,
    )  # fmt: skip
    excluded = {r["components"]: (r["n"], r["excluded"]) for r in result["metrics"]}
    for components, (n, out) in excluded.items():
        # the failed image keeps its image component; without it, it has nothing and is excluded
        assert (n, out) == ((6, 0) if "image" in components else (5, 1)), components
    with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
        failed = con.sql("select image_id, kind, error from descriptions where error is not null").fetchall()
    assert {(i, k) for i, k, _ in failed} == {("test/0000003", "description"), ("test/0000003", "prediction")}
    assert all("503" in e for _, _, e in failed)


def _jpeg(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG")
    return buffer.getvalue()
