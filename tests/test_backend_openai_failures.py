"""How OpenAIDescriber sorts failures, against the local fault-injecting server: a failure of the
describer as a whole raises DescriberUnavailable (one line, the server's reason, what to check, no
key) and every later call raises it without a request; transient ones are retryable answers; an
item's own failure is its error; a 400 naming a parameter the model refuses is adapted to."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from backends.base import DescriberUnavailable
from fakes.chat_server import (
    BAD_ITEM,
    FAIL_SIZE,
    SENTINEL_KEY,
    THINKING,
    FakeChatServer,
    images,
    load,
    no_key,
    serving,
)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    with serving(monkeypatch) as srv:
        yield srv


def _unavailable(call: object) -> str:
    with pytest.raises(DescriberUnavailable) as info:
        call()  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message and SENTINEL_KEY not in message
    return message


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (401, ["401", "OPENAI_API_KEY"]),
        (403, ["403", "OPENAI_API_KEY"]),
        (404, ["404", "model id", "OPENAI_BASE_URL"]),
    ],
)
def test_systemic_status_fails_the_describer_at_once(
    server: FakeChatServer, status: int, words: list[str]
) -> None:
    server.status = status
    server.message = f"Incorrect API key provided: {SENTINEL_KEY} for this model"  # a server echoing the key
    describer = load()

    message = _unavailable(
        lambda: describer.describe(images(*[(20 + i, 20) for i in range(12)]), "Describe.")
    )

    assert all(w in message for w in words), message
    assert describer.model in message and server.base_url in message
    assert "Incorrect API key provided: *** for this model" in message
    sent = len(server.requests)
    assert sent <= describer.concurrency  # in-flight requests only; no retries of a 401
    # Later calls fail the same way, without a request.
    assert _unavailable(lambda: describer.describe_classes(["Describe a cat"], [0], ["cat"])) == message
    assert _unavailable(lambda: describer.guess(images((9, 9)), ["Which?"], [["a"]])) == message
    assert len(server.requests) == sent


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (429, "insufficient_quota: You exceeded your current quota"),
        (402, "payment_required: Insufficient credits"),
        (400, "budget_exceeded: Budget has been exceeded! Current cost: 12.1, Max budget: 12.0"),
    ],
)
def test_quota_exhausted_is_systemic_whatever_the_status(
    server: FakeChatServer, status: int, message: str
) -> None:
    server.status = status
    server.message = message
    text = _unavailable(lambda: load().describe(images((20, 20)), "Describe."))
    assert str(status) in text and "quota or credit exhausted" in text and "billing" in text


def test_connection_refused_before_any_answer_is_systemic(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "0")
    describer = load()

    message = _unavailable(lambda: describer.describe(images((10, 10), (11, 11)), "Describe."))

    assert "cannot reach the server" in message and "OPENAI_BASE_URL" in message
    assert f"127.0.0.1:{port}/v1" in message
    assert describer.forward_passes == 0


def test_connection_lost_after_answers_is_retryable(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "0")
    server.keep_alive = False  # no open connection survives the shutdown below
    describer = load()
    [first] = describer.describe(images((20, 20)), "Describe.")
    assert first.error is None
    server.shutdown()
    server.server_close()

    answers = describer.describe(images((21, 21), (22, 22)), "Describe.")

    assert all(a.text is None and a.retryable and a.error.startswith("APIConnectionError") for a in answers)


def test_timeout_is_retryable(server: FakeChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "0")
    monkeypatch.setenv("WDYS_OPENAI_TIMEOUT_S", "0.2")
    server.delay_s = 0.6
    [answer] = load().describe(images((20, 20)), "Describe.")
    assert answer.text is None and answer.retryable and answer.error.startswith("APITimeoutError")


def test_server_error_is_retryable_after_the_clients_retries(server: FakeChatServer) -> None:
    describer = load()
    answers = describer.describe(images((30, 30), FAIL_SIZE, (40, 30)), "Describe.")

    assert all(a.error is None and a.text for a in (answers[0], answers[2]))
    bad = answers[1]
    assert bad.text is None and bad.retryable and bad.error.startswith("InternalServerError: ")
    assert "Bearer ***" in bad.error  # the server echoed the key; the describer scrubbed it
    assert server.seen[f"Describe.|{FAIL_SIZE}"] == 3  # first try plus WDYS_OPENAI_MAX_RETRIES=2
    assert describer.forward_passes == 2
    no_key(answers, describer)


def test_rate_limit_left_after_retries_is_retryable(server: FakeChatServer) -> None:
    server.status = 429
    server.message = "rate_limited: slow down"
    [answer] = load().describe(images((20, 20)), "Describe.")
    assert answer.retryable and "RateLimitError" in answer.error
    assert len(server.requests) == 3


def test_bad_request_for_one_item_is_its_error(server: FakeChatServer) -> None:
    describer = load()
    ok, bad = describer.guess(images((20, 20), (21, 21)), ["Which class?", BAD_ITEM], [["a"]] * 2)
    assert ok.error is None and ok.text
    assert bad.text is None and not bad.retryable and "image too large" in bad.error
    # Once the describer has answered, even a whole batch of item failures stays item errors.
    answers = describer.guess(images((20, 20), (21, 21)), [BAD_ITEM] * 2, [["a"]] * 2)
    assert all(a.error and not a.retryable for a in answers)


def test_every_request_failing_is_left_to_the_shard(server: FakeChatServer) -> None:
    """A fresh describer whose every request fails returns the items' errors: whether they are the
    describer's failure is the shard's judgement (tasks.answers), which knows whether they are a
    whole shard or a few items asked again."""
    describer = load(max_new_tokens=5)
    answers = describer.describe(images((20, 20), (21, 21)), THINKING)
    assert all(a.text is None and not a.retryable for a in answers)
    assert "token limit (5 tokens)" in answers[0].error and "WDYS_OPENAI_EXTRA_BODY" in answers[0].error


def test_server_rejecting_max_tokens_gets_max_completion_tokens(server: FakeChatServer) -> None:
    server.reject_max_tokens = True
    describer = load(max_new_tokens=21)

    answers = describer.describe(images((20, 20), (21, 21), (22, 22)), "Describe.")
    answers += describer.describe_classes(["Describe a cat"], [0], ["cat"])

    assert all(a.error is None and a.text for a in answers)
    rejected = [r for r in server.requests if "max_tokens" in r["body"]]
    accepted = [r for r in server.requests if "max_tokens" not in r["body"]]
    assert 1 <= len(rejected) <= 3  # only requests sent before the switch
    assert len(accepted) == 4 and all(r["body"]["max_completion_tokens"] == 21 for r in accepted)


def test_token_param_setting_avoids_the_rejection(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WDYS_OPENAI_TOKEN_PARAM", "max_completion_tokens")
    server.reject_max_tokens = True
    answers = load(max_new_tokens=21).describe(images((20, 20), (21, 21)), "Describe.")
    assert all(a.error is None for a in answers)
    assert len(server.requests) == 2


def test_server_rejecting_temperature_gets_none(server: FakeChatServer) -> None:
    server.reject_temperature = True
    server.reject_max_tokens = True  # a reasoning model refuses both
    describer = load()

    answers = describer.describe(images((20, 20), (21, 21)), "Describe.")
    answers += describer.describe_classes(["Describe a cat", "Describe a dog"], [0, 1], ["cat", "dog"])

    assert all(a.error is None and a.text for a in answers)
    last = server.requests[-2:]
    assert all("temperature" not in r["body"] and "seed" in r["body"] for r in last)
    assert describer.settings()["temperature"] == 0.0  # the key records what was asked


def test_temperature_setting_omits_it(server: FakeChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_OPENAI_TEMPERATURE", "omit")
    server.reject_temperature = True
    describer = load()
    answers = describer.describe_classes(["Describe a cat"], [0], ["cat"])
    assert answers[0].error is None
    assert len(server.requests) == 1 and "temperature" not in server.requests[0]["body"]
    assert describer.settings()["temperature"] == "omitted"
