"""A describer behind any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, Gemini, ...).

Settings come from the environment (read again by every `settings_for` and `load`):

- OPENAI_BASE_URL (default OpenAI's), OPENAI_API_KEY (a placeholder when unset: local servers want
  none). The key stays inside the client: never logged, never in `settings()`, scrubbed from errors.
- WDYS_OPENAI_CONCURRENCY (the most requests in flight to one endpoint and model, default 128: a
  batching server wants more waiting than it runs at once, so that its next batch never waits for
  the client's round trip; the budget shrinks on 429/503 and on timeouts), WDYS_OPENAI_TIMEOUT_S (60),
  WDYS_OPENAI_MAX_RETRIES (4; the client retries 408/409/429/5xx, timeouts and dropped connections
  with backoff and honours Retry-After).
- WDYS_OPENAI_TOKEN_PARAM: `max_tokens` (default) or `max_completion_tokens` (OpenAI's reasoning
  models). Without it, a 400 that rejects `max_tokens` switches this describer to the other name.
- WDYS_OPENAI_TEMPERATURE=omit sends no temperature (models that only take their default). Without
  it, a 400 that rejects the temperature makes this describer stop sending one. A sampled class
  description sends `top_p: 1` beside its temperature, so that a server's generation defaults (vLLM
  applies the model's `generation_config.json`) cannot narrow the samples.
- WDYS_OPENAI_EXTRA_BODY: a JSON object merged into every request body, e.g.
  `{"reasoning_effort": "low"}` or a Gemini thinking budget. It is part of the cache key.

Answers stopped by the token limit are kept and flagged `truncated`; an empty one (a thinking model
that spent the whole limit thinking) is an error. A failure of the describer as a whole (401, 402,
403, 404, a spent quota or budget whatever its status, an unreachable server) raises
`DescriberUnavailable` now and for every later call of this describer in the same flow run,
wherever in a shard it starts (the next run asks again). Only a refusal of one item's input (413,
415, a 400 or 422 naming it: `openai_errors.item_refusal`) is that item's final error; every other
failure left after the client's retries is a `retryable` answer. Whether many failing items say
the same (every request of a shard refused) is the shard task's judgement.

Requests draw on one adaptive in-flight budget per endpoint and model (`backends.inflight`), shared
by every describer and task of the process, so shards of one run overlap
(`concurrent_shards`): a shard's slow requests do not hold up the next shard's.
"""

from __future__ import annotations

import base64
import contextvars
import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion
from PIL import Image

from backends.base import Answer, AnswerSink, DescriberUnavailable, RunFailure, sample_seed
from backends.inflight import BudgetedHttpClient, budget_for, next_batch, queued_as
from backends.openai_errors import MAX_ERROR_CHARS, item_refusal, out_of_quota, rejects, server_message
from core.settings import (
    OPENAI_API_KEY,
    OPENAI_BASE_URL,
    OPENAI_CONCURRENCY,
    OPENAI_EXTRA_BODY,
    OPENAI_MAX_RETRIES,
    OPENAI_TEMPERATURE,
    OPENAI_TIMEOUT_S,
    OPENAI_TOKEN_PARAM,
)
from method.prompts import MAX_NEW_TOKENS

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Requests in flight by default: twice a 64-wide server batch. With 64 in flight a 64-slot server
# idles for every round trip (a bare client reached 88% of its rate, 98% with 128; docs/BENCHMARKS.md).
DEFAULT_CONCURRENCY = int(str(OPENAI_CONCURRENCY.default))
GREEDY_TEMPERATURE = 0.0
CLASS_TEMPERATURE = 0.99  # CuPL samples class descriptions at a high temperature for variety
TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")

T = TypeVar("T")
Sink = AnswerSink | None


def endpoint_identity(base_url: str | None) -> str:
    """scheme://host[:port]/path of the server: what answers depend on, without userinfo, query or
    fragment (where keys and tokens hide)."""
    parts = urlsplit((base_url or DEFAULT_BASE_URL).strip())
    try:
        port = parts.port
    except ValueError as exc:
        raise DescriberUnavailable(f"OPENAI_BASE_URL has an invalid port: {exc}") from None
    host = parts.hostname or ""
    if not parts.scheme or not host:
        raise DescriberUnavailable("OPENAI_BASE_URL is not a URL like http://host:port/v1")
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}{f':{port}' if port else ''}{parts.path.rstrip('/')}"


def _extra_body() -> dict[str, Any]:
    raw = OPENAI_EXTRA_BODY.text()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DescriberUnavailable(f"WDYS_OPENAI_EXTRA_BODY is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DescriberUnavailable(
            'WDYS_OPENAI_EXTRA_BODY must be a JSON object, e.g. {"reasoning_effort": "low"}'
        )
    return value


def _token_param() -> str:
    value = OPENAI_TOKEN_PARAM.text()
    if value not in TOKEN_PARAMS:
        raise DescriberUnavailable(f"WDYS_OPENAI_TOKEN_PARAM must be one of {TOKEN_PARAMS}, not {value!r}")
    return value


def _omit_temperature() -> bool:
    value = OPENAI_TEMPERATURE.text().lower()
    if value not in ("", "omit"):
        raise DescriberUnavailable(f"WDYS_OPENAI_TEMPERATURE can only be 'omit' (or unset), not {value!r}")
    return value == "omit"


def settings_for(spec: str, max_new_tokens: int) -> dict[str, object]:
    """Everything the answers depend on, from the environment alone (no request): the cache key.
    A temperature the model refuses is still recorded as asked: the same model at the same endpoint
    always refuses it, so the key still determines the answers. The name of the token limit changes
    nothing in the answers and is left out; it is checked here so that a typo fails up front."""
    _token_param()
    omit = _omit_temperature()
    return {
        "backend": "openai",
        "model": spec,
        "endpoint": endpoint_identity(OPENAI_BASE_URL.text()),
        "max_new_tokens": max_new_tokens,
        "temperature": "omitted" if omit else GREEDY_TEMPERATURE,
        "class_temperature": "omitted" if omit else CLASS_TEMPERATURE,
        "extra_body": _extra_body(),
    }


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
    """Each image (or class-description sample) is its own request, so one failure costs one answer.

    Thread-safe: tasks may call it for several shards at once (`tasks.slots.exclusive` then takes no
    lock); the in-flight budget bounds the requests, and each thread counts its own answers."""

    concurrent_shards = True

    def __init__(
        self,
        model: str,
        client: openai.OpenAI,
        max_new_tokens: int = MAX_NEW_TOKENS,
        concurrency: int = DEFAULT_CONCURRENCY,
        settings: dict[str, object] | None = None,
        token_param: str = TOKEN_PARAMS[0],
    ) -> None:
        self.model_id = "openai:" + model
        self.model = model
        self.client = client
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self.forward_passes = 0
        self._thread = threading.local()
        self._settings = settings or settings_for(model, max_new_tokens)
        self._token_param = token_param
        self._send_temperature = self._settings["temperature"] != "omitted"
        self._extra_body: dict[str, Any] = dict(self._settings["extra_body"])  # type: ignore[call-overload]
        self._lock = threading.Lock()
        self._reached = False  # the server has answered something: a later connection error is transient
        self._unavailable = RunFailure()

    @classmethod
    def load(cls, spec: str, max_new_tokens: int = MAX_NEW_TOKENS) -> OpenAIDescriber:
        """Checks the settings and builds the client; sends nothing (the first request tells)."""
        settings = settings_for(spec, max_new_tokens)
        concurrency = max(1, int(OPENAI_CONCURRENCY.number()))
        budget = budget_for(str(settings["endpoint"]), spec, concurrency)
        client = openai.OpenAI(
            base_url=OPENAI_BASE_URL.text() or None,
            api_key=OPENAI_API_KEY.text(),
            timeout=OPENAI_TIMEOUT_S.number(),
            max_retries=int(OPENAI_MAX_RETRIES.number()),
            http_client=BudgetedHttpClient(budget),
        )
        return cls(spec, client, max_new_tokens, concurrency, settings=settings, token_param=_token_param())

    def settings(self) -> dict[str, object]:
        return dict(self._settings)

    def passes_in_this_thread(self) -> int:
        """Answers got by calls from the current thread: a shard's own count while shards overlap."""
        return getattr(self._thread, "passes", 0)

    def _responses_here(self) -> int:
        return getattr(self._thread, "responses", 0)

    def describe(self, images: Sequence[Image.Image], prompt: str, on_answer: Sink = None) -> list[Answer]:
        return self._map(
            lambda im: self._ask(image_message(im, prompt), GREEDY_TEMPERATURE), images, on_answer
        )

    def guess(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        class_names: Sequence[Sequence[str]],
        on_answer: Sink = None,
    ) -> list[Answer]:
        """The server reads each prompt, which already lists its classes."""
        pairs = list(zip(images, prompts, strict=True))
        return self._map(lambda pair: self._ask(image_message(*pair), GREEDY_TEMPERATURE), pairs, on_answer)

    def describe_classes(
        self,
        prompts: Sequence[str],
        samples: Sequence[int],
        class_names: Sequence[str] = (),
        on_answer: Sink = None,
    ) -> list[Answer]:
        """One request per (prompt, sample), seeded by `sample_seed` (many servers ignore `n`)."""
        jobs = list(zip(prompts, samples, strict=True))
        return self._map(
            lambda job: self._ask(text_message(job[0]), CLASS_TEMPERATURE, sample_seed(*job)), jobs, on_answer
        )

    def _map(self, fn: Callable[[T], Answer], items: Sequence[T], on_answer: Sink) -> list[Answer]:
        """Each item's answer, also handed to `on_answer` as soon as it arrives."""
        self._raise_if_unavailable()
        if not items:
            return []

        batch = next_batch()  # this call's requests go out before those of any later call

        def counted(i: int, item: T) -> tuple[Answer, int]:  # the responses this item got, on its pool thread
            with queued_as(batch, i):
                before = self._responses_here()
                answer = fn(item)
                if on_answer is not None:
                    on_answer(i, answer)
                return answer, self._responses_here() - before

        # One thread per item; the budget decides how many are on the wire.
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            # each on a copy of the caller's context: a failure is remembered for the caller's run
            runs = [pool.submit(contextvars.copy_context().run, counted, i, x) for i, x in enumerate(items)]
            done = [run.result() for run in runs]
        self._thread.passes = self.passes_in_this_thread() + sum(n for _, n in done)
        # Whether failing items say the describer cannot answer at all is the shard's judgement
        # (`tasks.answers.require_an_answer`): only it knows whether they are a few items asked again.
        return [answer for answer, _ in done]

    def _request(
        self, messages: list[dict[str, Any]], temperature: float, seed: int | None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": messages}
        request[self._token_param] = self.max_new_tokens
        if self._send_temperature:
            request["temperature"] = temperature
            if seed is not None:  # a sample: from the whole distribution, whatever the server's defaults
                request["top_p"] = 1
        if seed is not None:
            request["seed"] = seed
        return {**request, **self._extra_body}  # over the typed fields, as the client's `extra_body`

    def _send(self, request: dict[str, Any]) -> Any:
        """The one place a request goes out (with the client's own retries): the seam for a shared
        in-flight budget. The body is posted as the JSON it already is: `chat.completions.create`
        would send the same bytes (tests/test_backend_openai.py) after walking every field of its
        typed parameters, a fifth of the client's CPU per request (docs/BENCHMARKS.md)."""
        return self.client.post("/chat/completions", body=request, cast_to=ChatCompletion)

    def _ask(self, messages: list[dict[str, Any]], temperature: float, seed: int | None = None) -> Answer:
        start = time.perf_counter()
        for _ in range(len(TOKEN_PARAMS) + 1):  # the first try, then at most one switch of each kind
            self._raise_if_unavailable()
            request = self._request(messages, temperature, seed)
            try:
                response = self._send(request)
            except openai.APIStatusError as exc:
                if not self._adapt(exc, request):
                    return self._failure(exc, time.perf_counter() - start)
            except Exception as exc:
                return self._failure(exc, time.perf_counter() - start)
            else:
                return self._answer(response, time.perf_counter() - start)
        return Answer(None, time.perf_counter() - start, error="the server kept rejecting the parameters")

    def _adapt(self, exc: openai.APIStatusError, request: dict[str, Any]) -> bool:
        """Switches to what the server wants after a 400 naming `max_tokens` or `temperature`; True
        when the request is worth sending again (also when another thread switched meanwhile)."""
        with self._lock:
            self._reached = True
            if "max_tokens" in request and rejects(exc, "max_tokens"):
                self._token_param = "max_completion_tokens"
                return True
            if "temperature" in request and rejects(exc, "temperature"):
                self._send_temperature = False
                return True
        return False

    def _answer(self, response: Any, latency: float) -> Answer:
        choice = response.choices[0] if response.choices else None
        message = choice.message if choice else None
        finish = choice.finish_reason if choice else None
        text = ((message.content if message else None) or "").strip()
        self._thread.responses = self._responses_here() + 1
        with self._lock:
            self.forward_passes += 1
            self._reached = True
        usage = response.usage
        error = None
        if finish == "content_filter":
            text, error = "", "blocked by the server's content filter"
        elif not text:
            refusal = getattr(message, "refusal", None) if message else None
            error = f"refused: {refusal}" if refusal else "empty answer"
            if finish == "length":
                error = (
                    f"empty answer at the token limit ({self.max_new_tokens} tokens): a thinking model spent "
                    "it all thinking; raise --max-new-tokens or lower the thinking budget "
                    "(WDYS_OPENAI_EXTRA_BODY, e.g. reasoning_effort)"
                )
        return Answer(
            text=text or None,
            latency_s=latency,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            error=self._scrub(error) if error else None,
            truncated=finish == "length",
        )

    def _failure(self, exc: Exception, latency: float) -> Answer:
        """An item's answer for a failed request, or `DescriberUnavailable` for the describer's."""
        if isinstance(exc, openai.APIStatusError):
            status, reason = exc.status_code, server_message(exc)
            if isinstance(exc, openai.AuthenticationError):
                raise self._fail(
                    f"the server refused the API key ({status}: {reason})", "check OPENAI_API_KEY"
                )
            if isinstance(exc, openai.PermissionDeniedError):
                raise self._fail(f"permission denied ({status}: {reason})", "check OPENAI_API_KEY's access")
            if isinstance(exc, openai.NotFoundError):
                raise self._fail(f"not found ({status}: {reason})", "check the model id and OPENAI_BASE_URL")
            if status == 402 or out_of_quota(exc):
                raise self._fail(
                    f"quota or credit exhausted ({status}: {reason})", "check the plan and billing"
                )
            with self._lock:
                self._reached = True
            # Only a refusal of this item's input is its error; anything else is asked again later.
            return Answer(None, latency, error=self._error_text(exc), retryable=not item_refusal(exc))
        if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
            if not self._reached:
                raise self._fail(
                    f"cannot reach the server ({exc})", "check OPENAI_BASE_URL and that it is up"
                )
            return Answer(None, latency, error=self._error_text(exc), retryable=True)
        # Timeouts, unreadable responses, anything of unknown cause: the server may answer next time.
        return Answer(None, latency, error=self._error_text(exc), retryable=True)

    def _fail(self, reason: str, check: str) -> DescriberUnavailable:
        """The describer-wide error, kept so that every later call raises it without a request."""
        where = self._settings["endpoint"]
        message = f"describer {self.model_id} at {where}: {reason}; {check}"
        with self._lock:
            return self._unavailable.remember(DescriberUnavailable(" ".join(self._scrub(message).split())))

    def _raise_if_unavailable(self) -> None:
        self._unavailable.check()

    def _scrub(self, message: str) -> str:
        key = self.client.api_key
        if isinstance(key, str) and len(key) >= 4:
            message = message.replace(key, "***")
        return message

    def _error_text(self, exc: Exception) -> str:
        """'ExcType: message', short, one line, with the key scrubbed in case a server echoed it."""
        message = " ".join(self._scrub(f"{type(exc).__name__}: {exc}").split())
        return message[:MAX_ERROR_CHARS]
