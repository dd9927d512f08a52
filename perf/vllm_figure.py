"""The `vllm` section of `make bench`: the managed `vllm:` path against the stand-in `vllm`
executable (fakes/vllm: the chat server of perf/served.py's figure, answering in 0.5 s with 64
batch slots, 128 requests/s at best), and what starting and stopping a server costs the run.

The describe and predict tasks of N CIFAR-10 test images run as in `served` (the flow's task runner,
timed inside the flow run), against a server started before the clock starts; the start (a process,
`/health`, the model in `/v1/models`) and the stop (SIGTERM, wait) are timed on their own. With a
real vLLM the start is dominated by loading the weights (minutes for a 7B model), which no stand-in
measures: `perf/vllm_gpu.py` compares `vllm:` with `hf:` on a GPU.

    python -m perf.bench --only vllm [--served-images 512]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from perf.figures import verdict
from perf.served import DELAY_S, describer_tasks, stats, timeline

REPO = Path(__file__).resolve().parent.parent
SLOTS = 64


def stand_in_environment() -> dict[str, str | None]:
    """Point `vllm:` at the stand-in for this process; returns what it replaced."""
    changes = {
        "WDYS_VLLM": str(REPO / "fakes" / "vllm"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_PROXY": "127.0.0.1,localhost",
        "FAKE_VLLM_DELAY_S": str(DELAY_S),
        "FAKE_VLLM_AT_ONCE": str(SLOTS),
    }
    old = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    return old


def start_stop(model: str, times: int = 3) -> tuple[float, float]:
    """Median seconds to start a server until it answers, and to stop it."""
    from backends import vllm_server

    starts, stops = [], []
    for _ in range(times):
        started = time.perf_counter()
        vllm_server.serve(model)
        starts.append(time.perf_counter() - started)
        started = time.perf_counter()
        vllm_server.stop_all()
        stops.append(time.perf_counter() - started)
    return sorted(starts)[times // 2], sorted(stops)[times // 2]


def figure(images: int = 512, shard_size: int = 64) -> list[dict]:
    from backends import vllm_server
    from flows.benchmark import benchmark

    old = stand_in_environment()
    try:
        with tempfile.TemporaryDirectory() as root:
            benchmark(root=root, limit=8, splits=["dev"])  # warm-up: the temporary Prefect server starts
        model = f"bench/vlm-{time.time_ns()}"
        start_s, stop_s = start_stop(model)
        server = vllm_server.serve(model)  # up before the clock starts, as after a run's first request
        with tempfile.TemporaryDirectory() as root:
            got = describer_tasks(root, images, shard_size, describer=f"vllm:{model}")
        got.update(stats(server.base_url))
        vllm_server.stop_all()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    requests, best, texts = 2 * images, SLOTS / DELAY_S, got["texts"]
    rate = requests / got["wall_s"]
    whole = texts == requests and got["answered"] == requests
    raw = (
        f"{requests} requests in {got['wall_s']:.1f} s = {rate:.1f}/s of {best:.0f}/s "
        f"({got['flow_wall_s']:.1f} s with the flow run's start and end); {timeline(got)}; "
        f"answers stored {texts}, answered by the server {got['answered']}"
    )
    return [
        verdict(
            "vllm describer (managed), 64 at once: rate / best",
            rate / best,
            ">= 0.9",
            rate / best >= 0.9,
            raw,
        ),
        verdict("vllm describer: none lost or repeated", float(whole), "1", whole, raw),
        verdict(
            "vllm stand-in server start + stop (s)",
            start_s + stop_s,
            "(informative)",
            True,
            f"start {start_s:.2f} s until /v1/models lists the model, stop {stop_s:.2f} s; median of 3",
        ),
    ]
