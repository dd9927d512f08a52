"""One adaptive in-flight budget per describer endpoint, shared by every task of the process.

A batching server (vLLM, SGLang) is fast only when many requests wait on it at once, so requests are
not bounded per shard call but per endpoint and model: every shard asking the same server draws on
one budget, and a shard's slow requests leave their slots to the next shard's. The budget counts
HTTP attempts on the wire (the client's own retries take a slot each; their backoff sleeps hold
none), so nothing is sent twice or dropped by it: it only decides when an attempt may start.

It adapts as a congestion window does (additive increase, fast decrease): an overload answer (429,
503) sets the limit to one below the attempts in flight when it was refused (what the server took),
so a burst of refusals brings it down to the server's capacity within one round, and pauses new
attempts for the answer's Retry-After; each success adds 1/limit, so the limit grows by one per
round back to its ceiling and probes for capacity with one refused attempt per round at most. A
timeout halves it: a server that queues what it cannot run (Ollama above OLLAMA_NUM_PARALLEL) answers
no 429, only ever later.
A multiplicative cut (TCP's halving) was measured against a server refusing above 16 in flight: it
kept the limit between 12 and 17, 74% of the server's rate (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import email.utils
import heapq
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import openai

OVERLOAD_STATUSES = (429, 503)
OVERLOAD_RESENDS = 3  # then the client's own retries, with their backoff, take over
MAX_PAUSE_S = 60.0  # the most a Retry-After may stop new requests (the client caps its own wait alike)


def retry_after_s(headers: httpx2.Headers) -> float | None:
    """Seconds a response asks the client to wait (`retry-after-ms`, `retry-after` seconds or date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


# Where a thread's requests queue for the budget: (batch, item), set by `queued_as`.
_place = threading.local()
_batches = itertools.count()
UNPLACED = (sys.maxsize, 0)  # requests sent outside any batch queue after every batch, in arrival order


def next_batch() -> int:
    """A batch number: a batch's requests are admitted before those of any batch numbered later."""
    return next(_batches)


@contextmanager
def queued_as(batch: int, item: int) -> Iterator[None]:
    """Requests sent from this thread meanwhile take place `(batch, item)` in the budget's queue."""
    _place.value = (batch, item)
    try:
        yield
    finally:
        del _place.value


class InflightBudget:
    """How many requests may be on the wire to one endpoint at once, adapted to its answers.

    Waiting attempts are admitted in the order of their place (`queued_as`: a shard's batch, then its
    items in order), a retry first: the shard that asked first finishes first, so shards end one
    after another and the next shard's task starts while the others keep the server busy. Admitted
    by arrival instead, the requests of shards started together interleaved, those shards ended
    together, and the server idled while their tasks started again (docs/BENCHMARKS.md)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = float(self.ceiling)
        self.in_flight = 0
        self.max_in_flight = 0
        self.cuts = 0
        self._paused_until = 0.0
        self._waiting: list[tuple[tuple[int, tuple[int, int], int], threading.Event]] = []  # a heap
        self._arrivals = itertools.count()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def set_ceiling(self, ceiling: int) -> None:
        """A later load may ask for another ceiling (the environment changed): the newest one holds."""
        with self._lock:
            self.ceiling = max(1, ceiling)
            self.limit = min(self.limit, self.ceiling)
            self._admit()

    def acquire(self, first: bool = False) -> None:
        """Wait for a slot (and for any Retry-After pause to end) in the order of this thread's
        place (`queued_as`); `first` jumps the queue."""
        admitted = threading.Event()
        place = getattr(_place, "value", UNPLACED)
        with self._lock:
            heapq.heappush(self._waiting, ((0 if first else 1, place, next(self._arrivals)), admitted))
            self._admit()
        admitted.wait()

    def _admit(self) -> None:
        """Hand free slots to the longest waiting attempts (under the lock); during a pause, wake up
        when it ends."""
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            if self._waiting and self._timer is None:
                self._timer = threading.Timer(pause, self._pause_over)
                self._timer.daemon = True
                self._timer.start()
            return
        while self._waiting and self.in_flight < int(self.limit):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            heapq.heappop(self._waiting)[1].set()

    def _pause_over(self) -> None:
        with self._lock:
            self._timer = None
            self._admit()

    def release(self, status: int | None, retry_after: float | None = None, timed_out: bool = False) -> bool:
        """Free the slot of an attempt that ended with `status` (None: no response at all). True
        when it was refused for overload while others were in flight: fewer at once may help, so it
        is worth sending again as soon as a slot frees (refused alone, only waiting helps)."""
        with self._lock:
            if timed_out:
                self.cuts += 1
                self.limit = max(1.0, min(self.limit, float(self.in_flight)) / 2)
            crowded = status in OVERLOAD_STATUSES and self.in_flight > 1
            if status in OVERLOAD_STATUSES:
                taken = min(self.limit, float(self.in_flight))  # this attempt included
                if taken - 1 < self.limit:
                    self.cuts += 1
                self.limit = max(1.0, taken - 1)
                if retry_after:
                    until = time.monotonic() + min(retry_after, MAX_PAUSE_S)
                    self._paused_until = max(self._paused_until, until)
            elif status is not None and status < 400:
                self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)
            self.in_flight -= 1
            self._admit()
            return crowded


class BudgetedHttpClient(openai.DefaultHttpxClient):
    """The OpenAI client's HTTP client with every attempt (retries included) drawn from a budget."""

    def __init__(self, budget: InflightBudget, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget = budget

    def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        """One attempt per slot. An attempt refused for overload among others in flight is sent
        again as soon as the lowered budget has a slot (after any Retry-After), up to
        `OVERLOAD_RESENDS` times, before the client's own timed backoff: the server did not take
        it, so nothing is asked twice, and it does not sleep while its shard waits for it."""
        retry = request.headers.get("x-stainless-retry-count", "0") != "0"  # the client's own retry
        for resend in range(OVERLOAD_RESENDS + 1):
            self.budget.acquire(first=retry or resend > 0)
            status, wait, again, timed_out = None, None, False, False
            try:
                response = super().send(request, **kwargs)
                status, wait = response.status_code, retry_after_s(response.headers)
            except httpx2.TimeoutException:
                timed_out = True
                raise
            finally:
                again = self.budget.release(status, wait, timed_out)
            if not again or resend == OVERLOAD_RESENDS:
                return response
            response.close()
        raise AssertionError("unreachable")


_budgets: dict[tuple[str, str], InflightBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(endpoint: str, model: str, ceiling: int) -> InflightBudget:
    """The process-wide budget of one endpoint and model (every describer and task shares it)."""
    with _budgets_lock:
        budget = _budgets.get((endpoint, model))
        if budget is None:
            budget = _budgets[(endpoint, model)] = InflightBudget(ceiling)
        elif budget.ceiling != max(1, ceiling):
            budget.set_ceiling(ceiling)
        return budget
