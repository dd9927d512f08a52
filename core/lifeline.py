"""A command-line run's processes die with it, however it ends.

Prefect's temporary server is a child process that Prefect stops at exit; a run killed with SIGKILL
(or by the out-of-memory killer) has no exit, and its server used to stay behind with no parent.
So each run starts this watchdog first, as its child: when its parent changes (the run ended,
whatever way) it stops every process that carries the run's token in its environment (the server,
Dask's local workers, the `vllm serve` processes of `vllm:` describers and their engine processes,
anything else the run started: each inherits the token). The watchdog runs in its own session, so a
Ctrl-C at the terminal reaches the run, not it. Linux only (it reads /proc); elsewhere it does
nothing.

    python -m core.lifeline RUN_PID TOKEN    # the watchdog itself, started by `start()`
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from core import settings

TOKEN = settings.RUN_TOKEN.name


def start() -> None:
    """Start this process's watchdog and mark the processes it starts from now on with a new token."""
    if not Path("/proc/self/environ").exists():
        return
    token = secrets.token_hex(16)
    subprocess.Popen(
        [sys.executable, "-m", "core.lifeline", str(os.getpid()), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    settings.RUN_TOKEN.export(token)  # after the watchdog started: it carries no token of this run


def processes_with(variable: str, value: str) -> list[int]:
    """Live processes of this user whose environment sets `variable` to `value` (a zombie's
    environment reads empty, so the dead do not count)."""
    mark = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:  # gone meanwhile, or another user's
                continue
            if mark in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


def stop(variable: str, value: str, grace_s: float = 5.0) -> None:
    """SIGTERM every process that carries the mark; SIGKILL what is left after `grace_s`."""
    deadline = time.monotonic() + grace_s
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_with(variable, value):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        while processes_with(variable, value) and time.monotonic() < deadline:
            time.sleep(0.1)


def watch(run: int, token: str, every_s: float = 0.2) -> None:
    """Wait for the run to end (this process then gets another parent), then stop what it left."""
    while os.getppid() == run:
        time.sleep(every_s)
    stop(TOKEN, token)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
