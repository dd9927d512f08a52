"""The run's long-lived heap is kept out of Python's full collections once a model has loaded
(core/heap.py), and what is settled can still be freed when a model is released."""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import Iterator

import pytest

from backends.registry import load_describer
from core import heap
from fakes.chat_server import FakeChatServer, serving


class Node:
    def __init__(self) -> None:
        self.itself = self  # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def unsettled() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the test process as it was


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    with serving(monkeypatch) as srv:
        yield srv


def tracked(obj: object) -> bool:
    """Whether a full collection would scan `obj` (settled objects are not in `gc.get_objects`)."""
    return any(o is obj for o in gc.get_objects())


def test_a_model_load_settles_what_lives_before_it_and_frees_what_is_garbage(server: FakeChatServer) -> None:
    kept = Node()
    dropped = weakref.ref(Node())  # garbage in a cycle before the load
    assert tracked(kept) and dropped() is not None

    load_describer(f"openai:heap-{uuid.uuid4().hex[:8]}")

    assert not tracked(kept)  # the long-lived heap is left out of later collections
    assert dropped() is None  # garbage was collected, not settled forever
    assert tracked(Node())  # what the run allocates afterwards is collected as usual


def test_collect_frees_a_settled_cycle_that_a_plain_collection_keeps() -> None:
    node = Node()
    gone = weakref.ref(node)
    heap.settle()
    del node

    gc.collect()
    assert gone() is not None  # settled: a plain collection cannot free it
    heap.collect()
    assert gone() is None
