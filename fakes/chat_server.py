"""A real local HTTP server speaking the chat-completions JSON shape, with faults on demand.

The server decides how to answer from what it receives (image size, prompt markers, its switches
for whole-server behaviour), records every request and counts requests in flight, so the tests
see exactly what went over the wire.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:  # light imports: fakes/vllm serves this in a process of its own
    import pytest

    from backends.base import Answer
    from backends.openai_describer import OpenAIDescriber

SENTINEL_KEY = "sk-test-SENTINEL-3f9a1c"
FAIL_SIZE = (13, 7)  # the server answers 500 to every request carrying an image of this size
RATE_LIMIT_ONCE = "RATE-LIMIT-ONCE"  # prompt marker: 429 on the first request, success after
EMPTY = "EMPTY-ANSWER"  # prompt marker: empty content and no usage
LENGTH = "LENGTH-CAPPED"  # prompt marker: the answer stops at the token limit
THINKING = "THINKING-ONLY"  # prompt marker: empty content at the token limit (Gemini thinking budget)
BAD_ITEM = "BAD-ITEM"  # prompt marker: 400 for this request only
ODD = "ODD-FAILURE"  # prompt marker: 418, a failure of unknown cause, for this request only
MAX_TOKENS_ERROR = {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error",
    "param": "max_tokens",
    "code": "unsupported_parameter",
}
QUOTA_ERROR = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "code": "insufficient_quota",
}
TEMPERATURE_ERROR = {
    "message": "Unsupported value: 'temperature' does not support 0 with this model. "
    "Only the default (1) value is supported.",
    "type": "invalid_request_error",
    "param": "temperature",
    "code": "unsupported_value",
}


class FakeChatServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog, set at bind: many clients may connect at once

    def __init__(self, port: int = 0, handler: type[BaseHTTPRequestHandler] | None = None) -> None:
        super().__init__(("127.0.0.1", port), handler or ChatHandler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0
        self.status: int | None = None  # answer every request with this status (and `message`)
        self.message = ""
        self.reject_max_tokens = False  # like OpenAI's reasoning models
        self.reject_temperature = False
        self.keep_alive = True  # False: close every connection after its response
        self.capacity: int | None = None  # answer 429 at once to a request above this many in flight
        self.capacity_headers: dict[str, str] = {}  # sent with those 429s (e.g. Retry-After)
        self.overloaded = 0  # 429s sent for capacity
        self.spans: list[tuple[float, float]] = []  # (arrival, reply) of every request answered 200
        self.quota: int | None = None  # the key's credit: 402 insufficient_quota once this many are answered
        self.answered = 0  # requests answered 200
        self.charged = 0  # requests admitted against `quota`

    def stats(self) -> dict[str, Any]:
        """Its counters (what `GET /stats` answers in the benchmarks' servers): answered and refused
        requests, the most in flight, and when it was busy (CLOCK_MONOTONIC, as the client's)."""
        with self.lock:
            spans = list(self.spans)
        return {
            "answered": len(spans),
            "refused": self.overloaded,
            "max_in_flight": self.max_in_flight,
            "first_arrival": min((s for s, _ in spans), default=0.0),
            "last_reply": max((e for _, e in spans), default=0.0),
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def request_parts(body: dict[str, Any]) -> tuple[str, Image.Image | None]:
    """The prompt text and the decoded image of a chat request."""
    content = body["messages"][0]["content"]
    if isinstance(content, str):
        return content, None
    text = next(p["text"] for p in content if p["type"] == "text")
    url = next((p["image_url"]["url"] for p in content if p["type"] == "image_url"), None)
    if url is None:
        return text, None
    header, b64 = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return text, Image.open(io.BytesIO(base64.b64decode(b64)))


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A reply's headers and body go out in two writes: with Nagle's algorithm the body waited for the
    # client's delayed ACK, 40 ms per request. Serving engines (uvicorn) set TCP_NODELAY too.
    disable_nagle_algorithm = True
    server: FakeChatServer

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        arrival = time.monotonic()
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            over = srv.capacity is not None and srv.in_flight > srv.capacity
            srv.overloaded += over
        try:
            if over:
                return self._send(429, {"error": {"message": "over capacity"}}, srv.capacity_headers)
            self.compute()
            if self._answer(body) == 200:
                with srv.lock:
                    srv.spans.append((arrival, time.monotonic()))
                    srv.answered += 1
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def compute(self) -> None:
        """The model's work on one request: `delay_s` of waiting (the seam a benchmark's server
        bounds with its batch slots, so that parsing and replying stay outside them)."""
        time.sleep(self.server.delay_s)

    def _answer(self, body: dict[str, Any]) -> int:
        srv = self.server
        text, image = request_parts(body)
        size = image.size if image else None
        key = f"{text}|{size}"
        with srv.lock:
            srv.requests.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "body": body, "size": size}
            )
            srv.seen[key] += 1
            attempt = srv.seen[key]
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        if srv.status is not None:
            return self._send(
                srv.status, {"error": {"message": srv.message, "code": srv.message.split(":")[0]}}
            )
        with srv.lock:  # a credit is taken as the request is admitted: concurrent ones never overdraw
            spent = srv.quota is not None and srv.charged >= srv.quota
            srv.charged += not spent
        if spent:
            return self._send(402, {"error": QUOTA_ERROR})
        if srv.reject_max_tokens and "max_tokens" in body:
            return self._send(400, {"error": MAX_TOKENS_ERROR})
        if srv.reject_temperature and "temperature" in body:
            return self._send(400, {"error": TEMPERATURE_ERROR})
        if ODD in text:
            return self._send(418, {"error": {"message": "I'm a teapot"}})
        if BAD_ITEM in text:
            return self._send(400, {"error": {"message": "image too large", "code": None}})
        if size == FAIL_SIZE:  # echoes the credentials, as a badly behaved proxy might
            err = {"error": {"message": f"boom, you sent {self.headers.get('Authorization')}"}}
            return self._send(500, err, {"retry-after-ms": "1"})
        if RATE_LIMIT_ONCE in text and attempt == 1:
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        seed = f" seed {body['seed']}" if "seed" in body else ""
        content = "" if EMPTY in text or THINKING in text else f"  seen {size} for: {text}{seed}\n"
        finish = "length" if LENGTH in text or THINKING in text else "stop"
        reply: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            ],
        }
        if EMPTY not in text:
            reply["usage"] = {
                "prompt_tokens": len(text),
                "completion_tokens": 5,
                "total_tokens": len(text) + 5,
            }
        return self._send(200, reply)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = not self.server.keep_alive
        return status


@contextmanager
def serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    """A started server, with the environment pointing the describer at it."""
    srv = FakeChatServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "2")
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def load(max_new_tokens: int = 77) -> OpenAIDescriber:
    """Env is read at load; a direct load sidesteps the registry's per-id cache."""
    from backends.openai_describer import OpenAIDescriber

    return OpenAIDescriber.load(f"test-vlm-{uuid.uuid4().hex[:8]}", max_new_tokens=max_new_tokens)


def images(*sizes: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB" if i % 2 else "L", size, color=40 * i) for i, size in enumerate(sizes)]


def no_key(answers: list[Answer], describer: OpenAIDescriber) -> None:
    assert SENTINEL_KEY not in repr(answers)
    assert SENTINEL_KEY not in repr(describer.settings())
