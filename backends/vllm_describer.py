"""`vllm:<hub id or local dir>[@revision]`: the `openai:` describer against a vLLM server that the run
itself starts (`backends.vllm_server`), on first use, and shares across its shard tasks.

Requests take the `openai:` path unchanged (the shared in-flight budget, the client's retries, the
failure rules). What differs: the endpoint is the managed server (a port that changes from run to run,
so the key names no endpoint), and the key holds what a served answer depends on instead: the model
and its resolved revision, the vLLM version, and the `vllm serve` flags that change answers. A server
that cannot start, or that has died, fails the describer as a refused key would
(`DescriberUnavailable`): answers received so far are kept aside, nothing is stored as an error, and
the rerun asks only what is missing.
"""

from __future__ import annotations

import threading
from typing import Any

import openai

from backends import vllm_server
from backends.base import Answer, DescriberUnavailable
from backends.inflight import BudgetedHttpClient, budget_for
from backends.openai_describer import OpenAIDescriber, _token_param
from backends.openai_describer import settings_for as openai_settings
from core.settings import OPENAI_CONCURRENCY, OPENAI_MAX_RETRIES, OPENAI_TIMEOUT_S, VLLM_BATCH_INVARIANT
from method.prompts import MAX_NEW_TOKENS

ENDPOINT = "vllm-managed"  # no URL: the run's own server, whatever its port
_DEATH_WAIT_S = 2.0  # a refused connection while the server is still exiting


def served_model(spec: str, revision: str | None = None) -> tuple[str, str | None, str]:
    """(what `vllm serve` loads, the revision it is pinned to or None, the revision the key names)."""
    from backends.hf_spec import UNRESOLVED, dir_content_hash, is_local, parse_spec, resolve_revision

    name, pinned = parse_spec(spec)
    if is_local(name):
        from pathlib import Path

        path = Path(name).expanduser()
        if not path.is_dir():
            raise DescriberUnavailable(
                f"vllm describer: model dir {name!r} does not exist; check the model id"
            )
        return str(path), None, dir_content_hash(path)
    resolved = pinned or revision or resolve_revision(name)
    return name, (None if resolved == UNRESOLVED else resolved), resolved


def settings_for(spec: str, max_new_tokens: int) -> dict[str, object]:
    """The cache key, without starting a server: the `openai:` request settings, the model and its
    revision, the vLLM version (`vllm --version`) and the answer-changing `vllm serve` flags."""
    from backends.hf_spec import model_name

    _, _, revision = served_model(spec)
    return {
        **openai_settings(spec, max_new_tokens),
        "backend": "vllm",
        "endpoint": ENDPOINT,
        "model": model_name(spec),
        "revision": revision,
        "vllm_version": vllm_server.version(),
        "server_flags": vllm_server.output_flags(vllm_server.check_settings()),
        "batch_invariant": VLLM_BATCH_INVARIANT.flag(),
    }


class VLLMDescriber(OpenAIDescriber):
    """An `OpenAIDescriber` whose first request starts (or finds) this process's server of the model."""

    def __init__(self, spec: str, client: openai.OpenAI, served: str, revision: str | None, **kwargs: Any):
        super().__init__(served, client, **kwargs)
        self.model_id = "vllm:" + spec
        self._served_revision = revision
        self._server: vllm_server.Server | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def load(cls, spec: str, max_new_tokens: int = MAX_NEW_TOKENS) -> VLLMDescriber:
        """Checks the settings and builds the client; the server starts with the first request."""
        settings = settings_for(spec, max_new_tokens)
        served, revision, _ = served_model(spec, str(settings["revision"]))
        concurrency = max(1, int(OPENAI_CONCURRENCY.number()))
        client = openai.OpenAI(
            base_url="http://127.0.0.1:9/v1",  # replaced by the server's once it is up
            api_key="EMPTY",
            timeout=OPENAI_TIMEOUT_S.number(),
            max_retries=int(OPENAI_MAX_RETRIES.number()),
            http_client=BudgetedHttpClient(budget_for(ENDPOINT, served, concurrency)),
        )
        return cls(
            spec, client, served, revision, max_new_tokens=max_new_tokens, concurrency=concurrency,
            settings=settings, token_param=_token_param(),
        )  # fmt: skip

    def server(self) -> vllm_server.Server:
        """This process's server of the model, started now if there is none, or if the one it had
        was released for another model on its device (one that died makes the describer unavailable)."""
        with self._start_lock:
            if self._server is None or self._server.released:
                self._server = vllm_server.serve(self.model, self._served_revision)
                self.client.base_url = self._server.base_url
            return self._server

    def _send(self, request: dict[str, Any]) -> Any:
        while True:
            with self.server().in_use() as usable:
                if usable:
                    return super()._send(request)

    def _failure(self, exc: Exception, latency: float) -> Answer:
        """A server that could not start, or that has died, fails the describer; anything else is
        judged as `openai:` does."""
        if isinstance(exc, DescriberUnavailable):
            with self._lock:
                failure = self._unavailable.remember(exc)
            raise failure
        server = self._server
        lost = isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)
        if lost and server is not None:
            status = server.exited(_DEATH_WAIT_S)
            if status is not None:
                raise self._fail(
                    f"its vLLM server exited mid-run (status {status}); its log {server.log} ends:"
                    f" {server.tail() or '(empty)'}",
                    "rerun to ask what is missing",
                )
        return super()._failure(exc, latency)
