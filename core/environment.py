"""The offline-friendly Prefect defaults, in one place, for every way a run starts: the `wdys`
command, `python -m flows.benchmark`, the Makefile's targets (`python -m core.environment` prints
them) and the deployments' job environment.

Without them a temporary Prefect server sends a telemetry heartbeat ("Failed to send telemetry" on
a machine without network; two runs at once on one machine then race on its database and print a
"database is locked" traceback), and the UI pulls assets from the internet. They must be in the
environment before Prefect is imported: Prefect reads its settings once, at import."""

from __future__ import annotations

import os
import shlex
from collections.abc import MutableMapping

# No telemetry, no UI assets: for every Prefect process, servers and deployed flow runs included.
OFFLINE = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_UI_ENABLED": "false",
}

# Every local process (the Makefile exports these to all its targets): the offline settings; a
# patient temporary server on a loaded machine; Prefect's own INFO lines (one per task run) hidden,
# while the run's progress lines have a level of their own (tasks/progress.py); torch's OpenMP
# threads sleep instead of spinning while they wait (up to 3x faster on a shared machine,
# docs/BENCHMARKS.md).
LOCAL = OFFLINE | {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}

# A command-line run (`wdys`, `python -m flows.benchmark`): also hides the temporary server's
# spurious errors when it shuts down.
COMMAND_LINE = LOCAL | {"PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL"}


def apply_defaults(defaults: dict[str, str], environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each default the environment does not set already: the user's own value wins."""
    for key, value in defaults.items():
        environ.setdefault(key, value)


def shell_assignments(defaults: dict[str, str]) -> str:
    """`KEY=value ...` for a shell command line (the Makefile's targets)."""
    return " ".join(f"{key}={shlex.quote(value)}" for key, value in defaults.items())


if __name__ == "__main__":  # the Makefile's exports
    print(shell_assignments(LOCAL))
