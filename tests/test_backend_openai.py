"""OpenAIDescriber against a real local HTTP server speaking the chat-completions JSON shape.

The server decides how to answer from what it receives (image size, prompt markers), records
every request and counts requests in flight, so the tests see exactly what went over the wire.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from backends.base import Answer, Describer
from backends.openai_describer import OpenAIDescriber
from backends.registry import load_describer

SENTINEL_KEY = "sk-test-SENTINEL-3f9a1c"
FAIL_SIZE = (13, 7)  # the server answers 500 to every request carrying an image of this size
RATE_LIMIT_ONCE = "RATE-LIMIT-ONCE"  # prompt marker: 429 on the first request, success after
EMPTY = "EMPTY-ANSWER"  # prompt marker: empty content and no usage


class FakeChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _parts(body: dict[str, Any]) -> tuple[str, Image.Image | None]:
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
    server: FakeChatServer

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            time.sleep(srv.delay_s)
            self._answer(body)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _answer(self, body: dict[str, Any]) -> None:
        srv = self.server
        text, image = _parts(body)
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
        if size == FAIL_SIZE:  # echoes the credentials, as a badly behaved proxy might
            err = {"error": {"message": f"boom, you sent {self.headers.get('Authorization')}"}}
            return self._send(500, err, {"retry-after-ms": "1"})
        if RATE_LIMIT_ONCE in text and attempt == 1:
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        content = "" if EMPTY in text else f"  seen {size} for: {text}\n"
        reply: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
        }
        if EMPTY not in text:
            reply["usage"] = {
                "prompt_tokens": len(text),
                "completion_tokens": 5,
                "total_tokens": len(text) + 5,
            }
        self._send(200, reply)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    srv = FakeChatServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "2")
    yield srv
    srv.shutdown()
    srv.server_close()


def _load(max_new_tokens: int = 77) -> OpenAIDescriber:
    """Env is read at load; a direct load sidesteps the registry's per-id cache."""
    return OpenAIDescriber.load(f"test-vlm-{uuid.uuid4().hex[:8]}", max_new_tokens=max_new_tokens)


def _images(*sizes: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB" if i % 2 else "L", size, color=40 * i) for i, size in enumerate(sizes)]


def _no_key(answers: list[Answer], describer: OpenAIDescriber) -> None:
    assert SENTINEL_KEY not in repr(answers)
    assert SENTINEL_KEY not in repr(describer.settings())


def test_describe_sends_images_prompt_and_key(server: FakeChatServer) -> None:
    describer = _load(max_new_tokens=33)
    prompt = 'Describe this image.\n  Ünïcode, "quotes" & trailing space '
    sizes = [(32, 20), (64, 64), (17, 90)]

    answers = describer.describe(_images(*sizes), prompt)

    assert [a.text for a in answers] == [f"seen {s} for: {prompt}".strip() for s in sizes]  # order kept
    assert all(a.error is None and a.latency_s > 0 for a in answers)
    assert all(a.prompt_tokens == len(prompt) and a.completion_tokens == 5 for a in answers)
    assert sorted(r["size"] for r in server.requests) == sorted(sizes)
    for r in server.requests:
        assert r["path"] == "/v1/chat/completions"
        assert r["auth"] == f"Bearer {SENTINEL_KEY}"
        assert r["body"]["model"] == describer.model
        assert r["body"]["temperature"] == 0 and r["body"]["max_tokens"] == 33
        assert _parts(r["body"])[0] == prompt
    assert describer.forward_passes == 3
    assert describer.settings() == {
        "model": describer.model,
        "max_new_tokens": 33,
        "temperature": 0.0,
        "class_temperature": 0.99,
    }
    _no_key(answers, describer)


def test_concurrency_is_bounded(server: FakeChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_OPENAI_CONCURRENCY", "3")
    server.delay_s = 0.05
    describer = _load()

    answers = describer.predict(
        _images(*[(20 + i, 20) for i in range(12)]), ["Which class?"] * 12, [["a", "b"]] * 12
    )

    assert all(a.error is None for a in answers)
    assert 2 <= server.max_in_flight <= 3


def test_one_failing_image_fails_alone_after_retries(server: FakeChatServer) -> None:
    describer = _load()
    images = _images((30, 30), FAIL_SIZE, (40, 30))

    answers = describer.describe(images, "Describe.")

    ok = [answers[0], answers[2]]
    assert all(a.error is None and a.text for a in ok)
    bad = answers[1]
    assert bad.text is None and bad.error and bad.error.startswith("InternalServerError: ")
    assert "Bearer ***" in bad.error  # the server echoed the key; the describer scrubbed it
    assert server.seen[f"Describe.|{FAIL_SIZE}"] == 3  # first try plus WDYS_OPENAI_MAX_RETRIES=2
    assert describer.forward_passes == 2
    _no_key(answers, describer)


def test_rate_limit_then_success(server: FakeChatServer) -> None:
    describer = _load()

    [answer] = describer.describe(_images((25, 25)), f"{RATE_LIMIT_ONCE} describe")

    assert answer.error is None and answer.text
    assert len(server.requests) == 2


def test_empty_content_is_an_error(server: FakeChatServer) -> None:
    describer = _load()

    [answer] = describer.describe(_images((25, 25)), EMPTY)

    assert answer == Answer(text=None, latency_s=answer.latency_s, error="empty answer")


def test_unreachable_server_gives_error_answers(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # discard port: nothing listens
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "0")
    describer = _load()

    answers = describer.describe(_images((10, 10), (11, 11)), "Describe.")

    assert all(a.text is None and a.error and a.error.startswith("APIConnectionError") for a in answers)
    assert describer.forward_passes == 0


def test_describe_classes_samples_separately(server: FakeChatServer) -> None:
    describer = _load()
    prompts = ["Describe what a cat looks like", "Describe what a dog looks like"]

    answers = describer.describe_classes(prompts, samples=3)

    assert [len(per_prompt) for per_prompt in answers] == [3, 3]
    assert all(a.text == f"seen None for: {p}" for p, per in zip(prompts, answers, strict=True) for a in per)
    assert len(server.requests) == 6
    for r in server.requests:
        assert r["body"]["temperature"] == 0.99
        assert r["body"]["messages"][0]["content"] in prompts  # text only, verbatim
        assert r["body"].get("n", 1) == 1
    assert describer.forward_passes == 6
    assert describer.describe_classes([], samples=3) == []


def test_registry_dispatch(server: FakeChatServer) -> None:
    model = f"test-vlm-{uuid.uuid4().hex[:8]}"
    describer = load_describer(f"openai:{model}", max_new_tokens=12)

    assert isinstance(describer, OpenAIDescriber) and isinstance(describer, Describer)
    assert describer.model_id == f"openai:{model}"
    assert describer.settings()["max_new_tokens"] == 12
