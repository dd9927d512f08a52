"""Figure 1 of issue 13: the `openai:` describer against a local OpenAI-compatible server that answers
in 0.5 s and serves at most 64 requests at once (128 requests/s at best), then against the same
server answering 429 above 16 in flight (32 requests/s at best).

The describe and predict tasks of N CIFAR-10 test images (2N requests) run as the benchmark flow runs
them: Prefect tasks on the flow's bounded thread pool ($WDYS_TASK_THREADS), shards submitted in order,
default describer settings, timed inside the flow run from the first submission to the last result
(a run pays Prefect's flow start and end, about 1 s, once, not per 1,024 requests; the raw numbers
show both). The server (fakes/chat_server.py, in its own process so that it does not share the
client's GIL) holds one of its 64 batch slots for each request's 0.5 s of compute, parsing and
replying outside them as a serving engine does; it counts the requests it answered and refused:
every image must end with a stored answer, and the server must have answered exactly 2N requests
(none lost, none answered twice).

    python -m perf.served [--images 512] [--shard-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DELAY_S = 0.5


class FirstComeSlots:
    """At most `count` holders at once, handed on in order of arrival: a serving engine's first come,
    first served scheduler (vLLM's default policy), where a semaphore would let newcomers barge."""

    def __init__(self, count: int) -> None:
        self.free = count
        self.waiting: deque[threading.Event] = deque()
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            if self.free and not self.waiting:
                self.free -= 1
                return
            turn = threading.Event()
            self.waiting.append(turn)
        turn.wait()

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            if self.waiting:
                self.waiting.popleft().set()  # the slot passes straight to the longest waiting
            else:
                self.free += 1


def serve(delay_s: float, at_once: int | None, reject_above: int | None) -> None:
    """Run the fake server until killed: at most `at_once` requests served at a time (the others
    wait, as in a batching server's queue), or 429 at once above `reject_above` in flight.
    GET /stats answers its counters as JSON."""
    sys.path.insert(0, str(REPO))
    from fakes.chat_server import ChatHandler, FakeChatServer

    slots = FirstComeSlots(at_once) if at_once else None

    class Handler(ChatHandler):
        def compute(self) -> None:  # a batch slot is held for the model's 0.5 s, as in a serving engine
            if slots is None:
                return super().compute()
            with slots:
                return super().compute()

        def do_GET(self) -> None:
            self._send(200, self.server.stats())

    server = FakeChatServer()
    server.RequestHandlerClass = Handler
    server.delay_s = delay_s
    server.capacity = reject_above
    print(server.base_url, flush=True)
    server.serve_forever(poll_interval=0.05)


def start_server(at_once: int | None, reject_above: int | None) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "perf.served", "--serve", "--delay", str(DELAY_S)]
    args += ["--at-once", str(at_once or 0), "--reject-above", str(reject_above or 0)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=10) as answer:
        return json.load(answer)


def describer_tasks(root: str, images: int, shard_size: int, describer: str | None = None) -> dict:
    """The ingest, describe and predict tasks of `images` CIFAR-10 test images, run on the benchmark
    flow's task runner: their wall time timed inside the flow run (`wall_s`) and its bounds on
    CLOCK_MONOTONIC, the server's clock too (`started`, `ended`); the same plus the flow run's own
    start and end (`flow_wall_s`: Prefect's fixed cost of about a second, once per run); and the
    answers stored (`texts`, a text each)."""
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.benchmark import task_threads
    from storage.io import read_table
    from storage.keys import Selection
    from tasks.answers import for_describer
    from tasks.describe import answerer_for, describe_shard, guess_shard
    from tasks.ingest import ingest_shard
    from tasks.plan import plan_dataset

    plan = plan_dataset(Selection("cifar10", "test", images, 0, shard_size))
    parts = [plan.shard(i) for i in range(len(plan.shards))]
    answerer = answerer_for(describer or f"openai:bench-{time.time_ns()}", 77, None, None)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=task_threads()))
    def describe_only() -> tuple[list, float, float]:
        started = time.monotonic()
        manifests = [ingest_shard.submit(root, part) for part in parts]
        futures = []
        for s, part in enumerate(parts):
            for describer_task in (describe_shard, guess_shard):  # as flows.stages.answer submits them
                submit = for_describer(describer_task, answerer.describer).submit
                futures.append(submit(root, part, answerer, manifests[s]))
        return [f.result() for f in futures], started, time.monotonic()

    started, cpu = time.monotonic(), time.process_time()
    results, tasks_started, tasks_ended = describe_only()
    flow_wall = time.monotonic() - started
    print(f"  client CPU {time.process_time() - cpu:.1f} s in {flow_wall:.1f} s", flush=True)
    texts = sum(sum(t is not None for t in read_table(r.path).column("text").to_pylist()) for r in results)
    return {
        "wall_s": tasks_ended - tasks_started,
        "flow_wall_s": flow_wall,
        "texts": texts,
        "started": tasks_started,
        "ended": tasks_ended,
    }


def timeline(got: dict) -> str:
    """Where the tasks' wall time went: before the server's first request, while it answered, and
    after its last answer (the run's and the server's clocks are the same CLOCK_MONOTONIC)."""
    lead, busy = got["first_arrival"] - got["started"], got["last_reply"] - got["first_arrival"]
    return (
        f"first request {lead:.2f} s after the tasks started, server busy {busy:.2f} s, "
        f"tasks ended {got['ended'] - got['last_reply']:.2f} s after its last answer"
    )


def measure(images: int, shard_size: int, at_once: int | None, reject_above: int | None) -> dict:
    proc, base_url = start_server(at_once, reject_above)
    old = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "NO_PROXY")}
    os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="local", NO_PROXY="127.0.0.1,localhost")
    try:
        with tempfile.TemporaryDirectory() as root:
            return {**describer_tasks(root, images, shard_size), **stats(base_url)}
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        proc.kill()
        proc.wait()


def figure(images: int = 512, shard_size: int = 64) -> list[dict]:
    from flows.benchmark import benchmark
    from perf.figures import verdict

    with tempfile.TemporaryDirectory() as root:
        benchmark(root=root, limit=8, splits=["dev"])  # warm-up: the temporary Prefect server starts
    rows = []
    for label, at_once, reject, best, target in (
        ("served 64 at once", 64, None, 64 / DELAY_S, 0.90),
        ("429 above 16 in flight", None, 16, 16 / DELAY_S, 0.80),
    ):
        got = measure(images, shard_size, at_once, reject)
        requests = 2 * images
        rate = requests / got["wall_s"]
        whole = got["texts"] == requests and got["answered"] == requests  # none lost, none answered twice
        raw = (
            f"{requests} requests in {got['wall_s']:.1f} s = {rate:.1f}/s of {best:.0f}/s "
            f"({got['flow_wall_s']:.1f} s with the flow run's start and end); "
            f"{timeline(got)}; {got['refused']} refused (429), "
            f"most in flight {got['max_in_flight']}; "
            f"answers stored {got['texts']}, answered by the server {got['answered']}"
        )
        rows.append(
            verdict(
                f"openai describer, {label}: rate / best",
                rate / best,
                f">= {target}",
                rate / best >= target,
                raw,
            )
        )
        rows.append(
            verdict(f"openai describer, {label}: none lost or repeated", float(whole), "1", whole, raw)
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.served", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, default=DELAY_S, help=argparse.SUPPRESS)
    parser.add_argument("--at-once", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--reject-above", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.delay, args.at_once or None, args.reject_above or None)
    else:
        figure(args.images, args.shard_size)


if __name__ == "__main__":
    main()
