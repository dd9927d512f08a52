"""OpenAIDescriber against a real local HTTP server: what goes over the wire, what comes back,
and what the cache key holds (fakes/chat_server.py is the server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from backends.base import Answer, Describer, DescriberUnavailable, sample_seed
from backends.openai_describer import OpenAIDescriber, endpoint_identity, settings_for
from backends.registry import describer_settings, load_describer
from fakes.chat_server import (
    EMPTY,
    LENGTH,
    RATE_LIMIT_ONCE,
    SENTINEL_KEY,
    THINKING,
    FakeChatServer,
    images,
    load,
    no_key,
    request_parts,
    serving,
)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    with serving(monkeypatch) as srv:
        yield srv


def test_describe_sends_images_prompt_and_key(server: FakeChatServer) -> None:
    describer = load(max_new_tokens=33)
    prompt = 'Describe this image.\n  Ünïcode, "quotes" & trailing space '
    sizes = [(32, 20), (64, 64), (17, 90)]

    answers = describer.describe(images(*sizes), prompt)

    assert [a.text for a in answers] == [f"seen {s} for: {prompt}".strip() for s in sizes]  # order kept
    assert all(a.error is None and a.latency_s > 0 and not a.truncated for a in answers)
    assert all(a.prompt_tokens == len(prompt) and a.completion_tokens == 5 for a in answers)
    assert sorted(r["size"] for r in server.requests) == sorted(sizes)
    for r in server.requests:
        assert r["path"] == "/v1/chat/completions"
        assert r["auth"] == f"Bearer {SENTINEL_KEY}"
        assert r["body"]["model"] == describer.model
        assert r["body"]["temperature"] == 0 and r["body"]["max_tokens"] == 33
        assert "seed" not in r["body"] and "max_completion_tokens" not in r["body"]
        assert request_parts(r["body"])[0] == prompt
    assert describer.forward_passes == 3
    no_key(answers, describer)


def test_settings_hold_endpoint_and_generation_without_a_request(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    describer = load(max_new_tokens=33)
    expected = {
        "backend": "openai",
        "model": describer.model,
        "endpoint": server.base_url,
        "max_new_tokens": 33,
        "temperature": 0.0,
        "class_temperature": 0.99,
        "extra_body": {},
    }
    assert describer.settings() == expected
    assert settings_for(describer.model, 33) == expected
    assert describer_settings(describer.model_id, 33) == expected
    assert server.requests == []  # neither loading nor settings asked the server anything

    monkeypatch.setenv("OPENAI_BASE_URL", "https://user:pw@API.Example.com:8443/v1/?key=abc#frag")
    monkeypatch.setenv("WDYS_OPENAI_TEMPERATURE", "omit")
    monkeypatch.setenv("WDYS_OPENAI_EXTRA_BODY", '{"reasoning_effort": "low"}')
    other = settings_for("m", 10)
    assert other["endpoint"] == "https://api.example.com:8443/v1"
    assert other["temperature"] == other["class_temperature"] == "omitted"
    assert other["extra_body"] == {"reasoning_effort": "low"}
    assert "pw" not in repr(other) and "abc" not in repr(other)
    assert endpoint_identity(None) == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("WDYS_OPENAI_EXTRA_BODY", "{not json", "not valid JSON"),
        ("WDYS_OPENAI_EXTRA_BODY", "[1, 2]", "JSON object"),
        ("WDYS_OPENAI_TOKEN_PARAM", "max_new_tokens", "WDYS_OPENAI_TOKEN_PARAM"),
        ("WDYS_OPENAI_TEMPERATURE", "0.5", "WDYS_OPENAI_TEMPERATURE"),
        ("OPENAI_BASE_URL", "localhost-without-scheme", "OPENAI_BASE_URL"),
    ],
)
def test_bad_settings_are_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, match: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(DescriberUnavailable, match=match):
        settings_for("m", 10)
    with pytest.raises(DescriberUnavailable, match=match):
        OpenAIDescriber.load("m", max_new_tokens=10)


def test_concurrency_is_bounded(server: FakeChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_OPENAI_CONCURRENCY", "3")
    server.delay_s = 0.05
    describer = load()

    answers = describer.guess(
        images(*[(20 + i, 20) for i in range(12)]), ["Which class?"] * 12, [["a", "b"]] * 12
    )

    assert all(a.error is None for a in answers)
    assert 2 <= server.max_in_flight <= 3


def test_rate_limit_then_success(server: FakeChatServer) -> None:
    describer = load()

    [answer] = describer.describe(images((25, 25)), f"{RATE_LIMIT_ONCE} describe")

    assert answer.error is None and answer.text
    assert len(server.requests) == 2


def test_empty_content_is_an_error(server: FakeChatServer) -> None:
    describer = load()

    [answer] = describer.describe(images((25, 25)), EMPTY)

    assert answer == Answer(text=None, latency_s=answer.latency_s, error="empty answer")


def test_length_capped_answer_is_kept_and_flagged(server: FakeChatServer) -> None:
    describer = load(max_new_tokens=7)

    capped, thinking, full = describer.guess(
        images((20, 20), (21, 21), (22, 22)), [LENGTH, THINKING, "Which class?"], [["a"]] * 3
    )

    assert capped.text == f"seen (20, 20) for: {LENGTH}" and capped.truncated and capped.error is None
    assert thinking.text is None and thinking.truncated and not thinking.retryable
    assert thinking.error and "token limit (7 tokens)" in thinking.error and "thinking" in thinking.error
    assert full.text and not full.truncated and full.error is None


def test_extra_body_fields_reach_the_server(server: FakeChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"reasoning_effort": "low", "google": {"thinking_config": {"thinking_budget": 0}}}
    monkeypatch.setenv(
        "WDYS_OPENAI_EXTRA_BODY",
        '{"reasoning_effort": "low", "google": {"thinking_config": {"thinking_budget": 0}}}',
    )
    describer = load()

    describer.describe(images((20, 20)), "Describe.")
    describer.describe_classes(["Describe a cat"], [0], ["cat"])

    assert len(server.requests) == 2
    for r in server.requests:
        assert {k: r["body"][k] for k in extra} == extra
    assert describer.settings()["extra_body"] == extra


def test_requests_are_the_json_the_typed_client_sends(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The describer posts its requests as plain JSON, skipping `chat.completions.create`'s walk over
    its typed parameters (a fifth of the client's CPU): what reaches the server must not change."""
    monkeypatch.setenv("WDYS_OPENAI_EXTRA_BODY", '{"reasoning_effort": "low"}')
    describer = load(max_new_tokens=21)

    describer.describe(images((20, 20)), "Describe.")
    describer.describe_classes(["Describe a cat"], [3], ["cat"])
    posted = [r["body"] for r in server.requests]
    for body in posted:
        typed = {k: v for k, v in body.items() if k != "reasoning_effort"}
        describer.client.chat.completions.create(**typed, extra_body={"reasoning_effort": "low"})

    assert len(posted) == 2 and posted[1]["seed"] == sample_seed("Describe a cat", 3)
    assert [r["body"] for r in server.requests[2:]] == posted


def test_describe_classes_one_seeded_request_per_pair(server: FakeChatServer) -> None:
    describer = load()
    prompts = ["Describe what a cat looks like", "Describe what a dog looks like"]
    pairs = [(p, s) for p in prompts for s in range(3)]

    answers = describer.describe_classes(
        [p for p, _ in pairs], [s for _, s in pairs], ["cat"] * 3 + ["dog"] * 3
    )

    seeds = [sample_seed(p, s) for p, s in pairs]
    assert len(set(seeds)) == 6
    assert [a.text for a in answers] == [
        f"seen None for: {p} seed {sd}" for (p, _), sd in zip(pairs, seeds, strict=True)
    ]
    assert len(server.requests) == 6
    for r in server.requests:
        assert r["body"]["temperature"] == 0.99
        # top_p sent, so that a server's own generation defaults (vLLM reads the model's) cannot
        # narrow the samples to a nucleus
        assert r["body"]["top_p"] == 1
        assert r["body"]["messages"][0]["content"] in prompts  # text only, verbatim
        assert r["body"].get("n", 1) == 1
    assert sorted(r["body"]["seed"] for r in server.requests) == sorted(seeds)
    # any subset asked alone gets the same seeds, hence the same samples
    [again] = describer.describe_classes([prompts[1]], [2], ["dog"])
    assert again.text == answers[5].text
    assert describer.forward_passes == 7
    assert describer.describe_classes([], [], []) == []


def test_registry_dispatch(server: FakeChatServer) -> None:
    model = f"test-vlm-{uuid.uuid4().hex[:8]}"
    describer = load_describer(f"openai:{model}", max_new_tokens=12)

    assert isinstance(describer, OpenAIDescriber) and isinstance(describer, Describer)
    assert describer.model_id == f"openai:{model}"
    assert describer.settings() == describer_settings(f"openai:{model}", 12)
