"""`pick_device` says when it falls back to the CPU. The model-compute concurrency limit counts per
device of each host, on a real Prefect server: two models on one device take turns, models on two
devices compute at once, and each device's limit is created on demand with $WDYS_GPU_SLOTS slots.
The models are stand-ins that only carry a `device` (no GPU here); the limits and the waiting are
Prefect's own."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid

import torch

from backends import device as devices
from tasks.slots import device_limit_name, exclusive

HOLD_S = 1.5


class StandIn:
    """What `exclusive` needs of a model: its device and a forward-pass counter."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.forward_passes = 0


def test_pick_device_says_once_that_it_falls_back_to_the_cpu(monkeypatch, caplog):
    monkeypatch.delenv("WDYS_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine's broken CUDA
    devices._warn_cpu_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="wdys.device"):
        assert devices.pick_device().type == "cpu"
        assert devices.pick_device().type == "cpu"
    said = [r.getMessage() for r in caplog.records if "models run on the CPU" in r.getMessage()]
    assert len(said) == 1, said
    monkeypatch.setenv("WDYS_DEVICE", "cpu")  # chosen, not fallen back to: nothing more is said
    devices._warn_cpu_fallback.cache_clear()
    caplog.clear()
    assert devices.pick_device().type == "cpu" and not caplog.records


def test_limit_names_are_per_host_and_device(monkeypatch):
    host = socket.gethostname()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_limit_name("gpu", "cuda:1") == f"gpu-{host}-cuda1"
    assert device_limit_name("gpu", "cuda") == f"gpu-{host}-cuda0"
    assert device_limit_name("gpu", "cpu") == f"gpu-{host}-cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a worker pinned to physical GPUs 3 and 5
    assert device_limit_name("gpu", "cuda:1") == f"gpu-{host}-cuda5"


def hold_at_once(models: list[StandIn]) -> list[tuple[float, float]]:
    """Each model computes for HOLD_S in its own thread; returns when each held its slot."""
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(models)

    def compute(i: int) -> None:
        with exclusive(models[i]):
            start = time.monotonic()
            time.sleep(HOLD_S)
            spans[i] = (start, time.monotonic())

    threads = [threading.Thread(target=compute, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return spans


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


def test_models_share_a_device_slot_but_not_another_devices(prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client

    prefix = f"gpu{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("WDYS_GPU_LIMIT", prefix)
    monkeypatch.setenv("WDYS_GPU_SLOTS", "1")
    same = hold_at_once([StandIn("cuda:0"), StandIn("cuda:0")])
    assert overlap(*same) < 0, f"two models computed on one device at once: {same}"
    other = hold_at_once([StandIn("cuda:0"), StandIn("cuda:1")])
    assert overlap(*other) > HOLD_S / 2, f"two devices took turns: {other}"
    with get_client(sync_client=True) as client:
        limits = {
            limit.name: limit.limit
            for limit in client.read_global_concurrency_limits(limit=200)
            if limit.name.startswith(prefix)
        }
    assert limits == {device_limit_name(prefix, "cuda:0"): 1, device_limit_name(prefix, "cuda:1"): 1}


def test_slots_let_two_models_share_a_device(prefect_server, monkeypatch):
    prefix = f"gpu{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("WDYS_GPU_LIMIT", prefix)
    monkeypatch.setenv("WDYS_GPU_SLOTS", "2")
    spans = hold_at_once([StandIn("cuda:0"), StandIn("cuda:0")])
    assert overlap(*spans) > HOLD_S / 2, f"two slots, yet the models took turns: {spans}"
