"""Every way a run starts behaves the same: `python -m flows.benchmark` applies the command line's
offline Prefect settings like `wdys` and `make run` do, and a run killed with SIGKILL leaves no
process behind (its temporary Prefect server used to stay, with no parent).

Real processes: the runs are subprocesses with their own temporary Prefect server, and the
processes left are read from /proc (Linux)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from core.lifeline import processes_with
from core.settings import COMMAND_LINE

REPO = Path(__file__).resolve().parents[1]
MISSING = "imagefolder:/nonexistent/photos"


def bare_environment(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without any of the command line's settings (a user's shell), and
    with a Prefect home of its own."""
    env = {k: v for k, v in os.environ.items() if k not in COMMAND_LINE and k != "PREFECT_API_URL"}
    return env | {"PREFECT_HOME": str(tmp_path / "prefect"), "WDYS_ROOT": str(tmp_path / "root")}


@pytest.mark.slow
def test_two_module_runs_at_once_print_only_their_error_line(tmp_path):
    """Without the offline settings the temporary server sent a telemetry heartbeat ("Failed to send
    telemetry" without network) and two runs on one Prefect home printed a 130-line "database is
    locked" traceback before their error line."""
    env = bare_environment(tmp_path)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.benchmark", "--datasets", MISSING],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 2, output
        assert "Traceback" not in output and "telemetry" not in output.lower(), output
        lines = output.strip().splitlines()
        assert lines[-1] == f"error: imagefolder {MISSING.split(':', 1)[1]}: no such folder", output
        assert len(lines) <= 6 and "database is locked" not in output, output  # Prefect's lines, one each


def server_of(mark: str) -> list[int]:
    """The temporary Prefect server (uvicorn) among the processes that carry `mark`."""
    found = []
    for pid in processes_with("WDYS_TEST_MARK", mark):
        try:
            if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads processes from /proc (Linux)")
def test_a_run_killed_with_sigkill_leaves_no_server_behind(tmp_path):
    mark = uuid.uuid4().hex  # inherited by everything the run starts
    env = bare_environment(tmp_path) | {"WDYS_TEST_MARK": mark}
    run = subprocess.Popen(
        [sys.executable, "-m", "wdys", "run", "--limit", "64"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not server_of(mark):
            assert run.poll() is None and time.monotonic() < deadline, "the run's server never started"
            time.sleep(0.2)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + 15
        while processes_with("WDYS_TEST_MARK", mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with("WDYS_TEST_MARK", mark) == []  # the server, and the watchdog too
    finally:
        for pid in processes_with("WDYS_TEST_MARK", mark):  # never leave a failed test's processes
            os.kill(pid, signal.SIGKILL)
