"""Start-up figures of `perf.bench` (section `startup`), each the median of alternating cold
processes of both sides:

- `wdys query` on a small root / the same SQL through bare Python and duckdb on its catalog file
  (target <= 2x);
- a fully cached `wdys run`, its process time less the flow's own wall time (the `wall time` it
  prints) / the whole process time of a trivial one-task Prefect flow (target <= 1.5x).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf.figures import verdict

SQL = "select count(*) from predictions"
BARE_QUERY = "import sys, duckdb; duckdb.connect(sys.argv[1], read_only=True).sql(sys.argv[2]).show()"
TRIVIAL_FLOW = """
from prefect import flow, task

@task
def one() -> int:
    return 1

@flow
def trivial() -> int:
    return one.submit().result()

trivial()
"""


def timed(args: list[str]) -> tuple[float, str]:
    """Seconds one process takes, from its start to its exit, and what it printed."""
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(
            f"{args[:4]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout


def startup(runs: int = 3, images: int = 16) -> list[dict]:
    root = tempfile.mkdtemp(prefix="wdys-startup-")
    run = [sys.executable, "-m", "wdys", "run", "--root", root, "--limit", str(images), "--sample-seed", "0"]
    timed(run)  # fills the cache and writes the catalog
    query = [sys.executable, "-m", "wdys", "query", "--root", root, SQL]
    bare = [sys.executable, "-c", BARE_QUERY, str(Path(root) / "wdys.duckdb"), SQL]
    times: dict[str, list[float]] = {"query": [], "bare": [], "outside": [], "trivial": []}
    for _ in range(runs):
        times["query"].append(timed(query)[0])
        times["bare"].append(timed(bare)[0])
        seconds, printed = timed(run)
        wall = float(re.findall(r"wall time: ([0-9.]+) s", printed)[-1])
        times["outside"].append(seconds - wall)
        times["trivial"].append(timed([sys.executable, "-c", TRIVIAL_FLOW])[0])
    q, b, o, t = (statistics.median(times[k]) for k in ("query", "bare", "outside", "trivial"))
    each = {k: ", ".join(f"{s:.2f}" for s in v) for k, v in times.items()}
    return [
        verdict(
            "wdys query / bare python+duckdb",
            q / b,
            "<= 2x",
            q / b <= 2,
            f"medians {q:.2f} s vs {b:.2f} s of {runs} each ({each['query']}; {each['bare']}); `{SQL}`",
        ),
        verdict(
            "cached wdys run outside its flow / trivial flow",
            o / t,
            "<= 1.5x",
            o / t <= 1.5,
            f"medians {o:.2f} s vs {t:.2f} s of {runs} each ({each['outside']}; {each['trivial']}); "
            f"{images} CIFAR-10 dev images, offline profile",
        ),
    ]
