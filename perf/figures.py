"""What every section of `perf.bench` shares: a figure's verdict line, and a flow run in a
process of its own (so that the sections need not import each other)."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def verdict(name: str, value: float, target: str, met: bool, raw: str) -> dict:
    """Print one figure as `name value target MET/MISSED (raw numbers)`; return it as a row."""
    line = f"{name:<48} {value:>10.3f}   target {target:<18} {'MET' if met else 'MISSED'}   ({raw})"
    print(line, flush=True)
    return {"figure": name, "value": value, "target": target, "met": met, "raw": raw}


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec, so a
# child of a large benchmark process would report the parent's peak.
PEAK_PROBE = (
    "import re, sys\n"
    "from flows.benchmark import main\n"
    "main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('PEAK_RSS_KB', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
)


def run_flow_process(args: list[str]) -> tuple[float, float, str]:
    """Peak resident memory (MiB), wall time (s) and output of one `python -m flows.benchmark`
    process, timed from its start: imports, the temporary Prefect server and model loads included."""
    env = {**os.environ, "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, *args], capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"flow failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    peak_kib = int(done.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return peak_kib / 1024, wall, done.stdout
