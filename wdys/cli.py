"""The `wdys` command: `wdys run` (the benchmark flow), `wdys query`, `wdys report`, `wdys deploy`.

A mistake the user must fix prints one `error: ...` line and exits with status 2 (`core.guard`);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from core import lifeline
from core.guard import guarded
from core.settings import COMMAND_LINE, apply_defaults

COMMANDS = {
    "run": ("flows.benchmark", "run the benchmark flow (the parameters of `python -m flows.benchmark`)"),
    "query": ("storage.query", 'SQL over the results catalog, read-only: wdys query "select * from metrics"'),
    "report": ("tasks.report", "write a report of the runs in a storage root"),
    "deploy": ("deployments.deploy", "create the work pool and the deployments"),
    "datasets": (
        "sources.fetch",
        "where each benchmark is read from; --fetch NAME|all copies it into $WDYS_DATA_DIR",
    ),
}


def usage() -> str:
    lines = ["usage: wdys {" + ",".join(COMMANDS) + "} ...", "", "commands:"]
    lines += [f"  {name:<8}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "`wdys COMMAND --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"{usage()}\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    apply_defaults(COMMAND_LINE)  # what `make` sets, for the console script too
    if argv[0] != "query":  # a query starts no process; its start must not wait for a watchdog's
        lifeline.start()  # the processes the command starts (a temporary Prefect server) die with it
    module = importlib.import_module(COMMANDS[argv[0]][0])  # after the environment: Prefect reads it
    return guarded(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
