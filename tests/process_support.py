"""Starting and stopping the separate processes some tests need (a Prefect server and worker, a Dask
scheduler and workers): each in its own session, killed with its whole group at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole group, then SIGKILL what is left of it (a 3.9 Prefect worker ignores the
    first SIGTERM; a Dask worker's process outlives its nanny for a moment)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(proc, wait):
            break
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the group is left behind


def _group_gone(proc: subprocess.Popen, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        proc.poll()  # reaps the leader, so that its id no longer counts
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False
