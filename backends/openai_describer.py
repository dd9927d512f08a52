"""A describer behind any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, ...).

Connection settings come from the environment at load time: OPENAI_BASE_URL, OPENAI_API_KEY (a
placeholder when unset, since local servers want none), WDYS_OPENAI_CONCURRENCY (requests in
flight, default 8), WDYS_OPENAI_TIMEOUT_S (default 60) and WDYS_OPENAI_MAX_RETRIES (default 4; the
client retries 408/409/429/5xx with backoff and honours Retry-After). The key stays inside the
client: it is never logged, never part of `settings()` and scrubbed from error strings.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import openai
from PIL import Image

from backends.base import Answer

GREEDY_TEMPERATURE = 0.0
CLASS_TEMPERATURE = 0.99  # CuPL samples class descriptions at a high temperature for variety
_MAX_ERROR_CHARS = 300

T = TypeVar("T")


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def image_data_url(image: Image.Image) -> str:
    """JPEG keeps request bodies small; quality 95 loses next to nothing a describer could see."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_message(image: Image.Image, prompt: str) -> list[dict[str, Any]]:
    content = [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
    ]
    return [{"role": "user", "content": content}]


def text_message(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


class OpenAIDescriber:
    """Each image (or class-description sample) is its own request, so one failure costs one answer."""

    def __init__(
        self, model: str, client: openai.OpenAI, max_new_tokens: int = 77, concurrency: int = 8
    ) -> None:
        self.model_id = "openai:" + model
        self.model = model
        self.client = client
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self.forward_passes = 0
        self._count_lock = threading.Lock()

    @classmethod
    def load(cls, spec: str, max_new_tokens: int = 77) -> OpenAIDescriber:
        client = openai.OpenAI(
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
            api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=_env_number("WDYS_OPENAI_TIMEOUT_S", 60.0),
            max_retries=int(_env_number("WDYS_OPENAI_MAX_RETRIES", 4)),
        )
        concurrency = max(1, int(_env_number("WDYS_OPENAI_CONCURRENCY", 8)))
        return cls(spec, client, max_new_tokens=max_new_tokens, concurrency=concurrency)

    def settings(self) -> dict[str, object]:
        return {
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "temperature": GREEDY_TEMPERATURE,
            "class_temperature": CLASS_TEMPERATURE,
        }

    def describe(self, images: Sequence[Image.Image], prompt: str) -> list[Answer]:
        return self._map(lambda im: self._ask(image_message(im, prompt), GREEDY_TEMPERATURE), images)

    def predict(
        self, images: Sequence[Image.Image], prompts: Sequence[str], class_names: Sequence[Sequence[str]]
    ) -> list[Answer]:
        """The server reads each prompt, which already lists its classes."""
        pairs = list(zip(images, prompts, strict=True))
        return self._map(lambda pair: self._ask(image_message(*pair), GREEDY_TEMPERATURE), pairs)

    def describe_classes(
        self, prompts: Sequence[str], samples: int, class_names: Sequence[str] = ()
    ) -> list[list[Answer]]:
        """`samples` separate requests per prompt: many servers ignore `n`."""
        jobs = [p for p in prompts for _ in range(samples)]
        flat = self._map(lambda p: self._ask(text_message(p), CLASS_TEMPERATURE), jobs)
        return [flat[i * samples : (i + 1) * samples] for i in range(len(prompts))]

    def _map(self, fn: Callable[[T], Answer], items: Sequence[T]) -> list[Answer]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def _ask(self, messages: list[dict[str, Any]], temperature: float) -> Answer:
        start = time.perf_counter()
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=self.max_new_tokens,
                temperature=temperature,
            )
        except Exception as exc:  # one failed request must not fail the batch
            return Answer(text=None, latency_s=time.perf_counter() - start, error=self._error_text(exc))
        latency = time.perf_counter() - start
        with self._count_lock:
            self.forward_passes += 1
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else None
        completion_tokens = usage.completion_tokens if usage else None
        content = response.choices[0].message.content if response.choices else None
        text = (content or "").strip()
        return Answer(
            text=text or None,
            latency_s=latency,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            error=None if text else "empty answer",
        )

    def _error_text(self, exc: Exception) -> str:
        """'ExcType: message', short, with the key scrubbed in case a server echoed it back."""
        message = f"{type(exc).__name__}: {exc}"
        key = self.client.api_key
        if isinstance(key, str) and key:
            message = message.replace(key, "***")
        return message[:_MAX_ERROR_CHARS]
