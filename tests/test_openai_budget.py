"""The shared in-flight budget of the OpenAI-compatible describer, against a real local HTTP server:
one budget per endpoint and model, shards overlapping, shrinking on 429 without losing or repeating
a request, honouring Retry-After, and growing back."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from backends.inflight import InflightBudget, budget_for, next_batch, queued_as, retry_after_s
from backends.openai_describer import OpenAIDescriber
from fakes.chat_server import FakeChatServer, images, serving
from tasks.slots import exclusive


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    with serving(monkeypatch) as srv:
        yield srv


def sized(n: int, offset: int = 0) -> list:
    """n images of distinct sizes: the server keys what it has seen on prompt and size."""
    return images(*[(20 + offset + i, 20) for i in range(n)])


def test_one_budget_per_endpoint_and_model(server: FakeChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_OPENAI_CONCURRENCY", "4")
    server.delay_s = 0.1
    model = f"m-{uuid.uuid4().hex[:6]}"
    first, second = OpenAIDescriber.load(model, 30), OpenAIDescriber.load(model, 40)
    other = OpenAIDescriber.load(model + "-other", 30)

    with ThreadPoolExecutor(2) as pool:
        calls = [
            pool.submit(d.describe, sized(12, 20 * i), "Describe") for i, d in enumerate((first, second))
        ]
        answers = [a for call in calls for a in call.result()]

    assert all(a.error is None for a in answers)
    assert server.max_in_flight == 4  # two describers of one model, twelve requests each: one budget
    endpoint = str(first.settings()["endpoint"])
    assert budget_for(endpoint, model, 4) is budget_for(endpoint, model, 4)
    assert budget_for(endpoint, model, 4) is not budget_for(endpoint, other.model, 4)


def test_shards_overlap_and_count_their_own_answers(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WDYS_OPENAI_CONCURRENCY", "16")
    server.delay_s = 0.5
    describer = OpenAIDescriber.load(f"m-{uuid.uuid4().hex[:6]}", 30)
    passes: dict[int, int] = {}

    def shard(i: int) -> None:
        with exclusive(describer) as spent:
            describer.describe(sized(8 + i, 20 * i), "Describe")
            passes[i] = spent()

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert server.max_in_flight > 9  # both shards on the wire at once (a lock would allow 9 at most)
    assert passes == {0: 8, 1: 9}
    assert describer.forward_passes == 17


def test_overload_shrinks_the_budget_and_loses_or_repeats_nothing(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WDYS_OPENAI_CONCURRENCY", "16")
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "10")
    server.delay_s = 0.05
    server.capacity = 4
    describer = OpenAIDescriber.load(f"m-{uuid.uuid4().hex[:6]}", 30)
    budget = budget_for(str(describer.settings()["endpoint"]), describer.model, 16)

    answers = describer.describe(sized(80), "Describe")

    assert all(a.error is None and a.text for a in answers)
    assert server.overloaded > 0 and budget.cuts >= 1
    assert len(server.spans) == 80 and len(server.seen) == 80  # each answered once, none asked again
    assert set(server.seen.values()) == {1}
    assert budget.limit < 16


def test_refused_among_others_is_sent_again_when_a_slot_frees(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WDYS_OPENAI_CONCURRENCY", "8")
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "0")  # no client retries: only the budget resends
    server.delay_s = 0.3
    server.capacity = 4

    answers = OpenAIDescriber.load(f"m-{uuid.uuid4().hex[:6]}", 30).describe(sized(8), "Describe")

    assert all(a.error is None for a in answers)
    assert server.overloaded >= 1 and len(server.spans) == 8


def test_retry_after_pauses_new_requests() -> None:
    budget = InflightBudget(4)
    budget.acquire()
    budget.release(429, retry_after=0.4)
    started = time.monotonic()
    budget.acquire()
    assert time.monotonic() - started >= 0.35
    budget.release(200)
    assert budget.limit == 2  # refused alone: down to 1, then one success adds 1/1


def test_refusals_bring_the_limit_to_what_the_server_took_then_it_grows_back() -> None:
    budget = InflightBudget(8)
    for _ in range(8):
        budget.acquire()
    for _ in range(3):
        budget.release(429)  # the server refused three of eight at once: it took five
    assert budget.limit == 5 and budget.cuts == 3 and budget.in_flight == 5
    limits = []
    for _ in range(5):
        budget.release(200)
        limits.append(budget.limit)
    assert 5 < limits[0] < limits[-1] < 6  # one more per round of successes
    for _ in range(40):
        budget.acquire()
        budget.release(200)
        limits.append(budget.limit)
    assert limits == sorted(limits) and limits[-1] == 8
    budget.acquire()
    budget.release(500)  # an error that is not overload neither cuts nor grows
    assert budget.limit == 8 and budget.cuts == 3


def test_slots_bound_attempts_and_are_returned_on_errors() -> None:
    budget = InflightBudget(2)
    budget.acquire()
    budget.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire() is None))
    waiter.start()
    time.sleep(0.1)
    assert got == [] and budget.in_flight == 2
    budget.release(None)  # a dropped connection frees its slot
    waiter.join(timeout=2)
    assert got == [True] and budget.in_flight == 2
    budget.release(200)
    budget.release(200)
    assert budget.in_flight == 0 and budget.max_in_flight == 2


def test_retry_after_header_forms() -> None:
    assert retry_after_s(httpx2.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after_s(httpx2.Headers({"retry-after": "3"})) == 3.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (retry_after_s(httpx2.Headers({"retry-after": date})) or 0) <= 31
    assert retry_after_s(httpx2.Headers({})) is None


def test_waiting_attempts_are_admitted_in_order_retries_first() -> None:
    budget = InflightBudget(1)
    budget.acquire()
    order: list[str] = []

    def wait(name: str, first: bool = False) -> None:
        budget.acquire(first=first)
        order.append(name)

    threads = []
    for name, first in (("a", False), ("b", False), ("c", False), ("retry", True)):
        threads.append(threading.Thread(target=wait, args=(name, first)))
        threads[-1].start()
        time.sleep(0.05)  # queued in this order
    for _ in range(4):
        budget.release(200)
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=2)
    assert order == ["retry", "a", "b", "c"]


def test_a_shard_that_asked_first_is_admitted_first_whatever_the_arrival_order() -> None:
    """Requests of shards started together interleave on arrival; admitted by place (batch, item),
    the earlier shard's go out first, so shards finish one after another."""
    budget = InflightBudget(1)
    budget.acquire()
    order: list[tuple[int, int]] = []
    early, late = next_batch(), next_batch()

    def wait(place: tuple[int, int]) -> None:
        with queued_as(*place):
            budget.acquire()
        order.append(place)

    arrivals = [(late, 0), (early, 1), (late, 1), (early, 0)]
    threads = [threading.Thread(target=wait, args=(place,)) for place in arrivals]
    for t in threads:
        t.start()
        time.sleep(0.05)  # queued in arrival order
    for _ in arrivals:
        budget.release(200)
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=2)
    assert order == [(early, 0), (early, 1), (late, 0), (late, 1)]


def test_a_timeout_halves_the_budget(server: FakeChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that queues rather than refuses (Ollama above its parallel limit) only ever answers
    late: the requests that timed out shrink the budget, and come back as retryable answers."""
    monkeypatch.setenv("WDYS_OPENAI_CONCURRENCY", "8")
    monkeypatch.setenv("WDYS_OPENAI_TIMEOUT_S", "0.3")
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "0")
    server.delay_s = 1.0
    describer = OpenAIDescriber.load(f"m-{uuid.uuid4().hex[:6]}", 30)
    budget = budget_for(str(describer.settings()["endpoint"]), describer.model, 8)

    answers = describer.describe(sized(8), "Describe")

    assert all(a.text is None and a.retryable for a in answers)
    assert budget.limit < 8 and budget.cuts >= 1
    budget.acquire()
    budget.release(200)
    assert budget.limit > 1  # an answer grows it back
