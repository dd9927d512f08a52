"""Which VLMs stay loaded: at most WDYS_HF_RESIDENT per device (default 1), least recently used
released first, so that a run with two VLMs does not hold both on one GPU.

A released describer keeps its object (the registry's cache, the tasks' locks and counters stay
valid) and loads its model again on its next call, through `loading` like any load. Loads and
releases are serialised by one lock; a release waits for the victim's running batch to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from backends.hf_spec import resident_limit


class Resident(Protocol):
    device: str

    @property
    def resident(self) -> bool: ...

    def release(self) -> None: ...


_lock = threading.RLock()
_loaded: list[Resident] = []  # least recently loaded first


@contextmanager
def loading(device: str, describer: Resident | None = None) -> Iterator[None]:
    """Make room on `device` (release the oldest VLMs there beyond the limit), then let the caller
    load under the lock, so that two loads never both find room."""
    with _lock:
        limit = resident_limit()
        same = [d for d in _loaded if d is not describer and d.device == device and d.resident]
        while limit and len(same) >= limit:
            victim = same.pop(0)
            victim.release()
            _loaded.remove(victim)
        yield


def loaded(describer: Resident) -> None:
    """Record a describer whose model is now in memory (the most recently loaded)."""
    with _lock:
        if describer in _loaded:
            _loaded.remove(describer)
        _loaded.append(describer)


def resident_on(device: str) -> list[Resident]:
    with _lock:
        return [d for d in _loaded if d.device == device and d.resident]
