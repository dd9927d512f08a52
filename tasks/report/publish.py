"""Writing a report (Markdown, HTML, figures) under any fsspec root, and the Prefect task that also
publishes it as artifacts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE

from method.stats import RESAMPLES
from storage.io import filesystem
from storage.paths import partition_value
from tasks.report.data import ReportData, collect
from tasks.report.document import Doc
from tasks.report.leaderboard import PAGE, leaderboard_doc
from tasks.report.sections import build

GAINS_SHOWN: tuple[str, ...]
GAINS_SHOWN = ("dataset", "split", "encoder", "describer", "class_weights", "components", "n", "base_top1")
GAINS_SHOWN += ("top1", "gain_top1", "ci_low", "ci_high", "b", "c", "mcnemar_p")


def default_name() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        from prefect.runtime import flow_run

        name = flow_run.name
    except Exception:  # outside Prefect there is no run name
        name = None
    return f"{stamp}-{partition_value(name)}" if name else stamp


def write_report(
    root: str,
    runs: list[dict[str, str]],
    out: str | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[str, Doc, ReportData]:
    """Write report.md, report.html and the figures to `out` (default `<root>/reports/<name>`)."""
    data = collect(root, runs, resamples, seed)
    doc = build(data)
    out = (out or f"{root}/reports/{default_name()}").rstrip("/")
    fs, path = filesystem(out)
    fs.makedirs(path, exist_ok=True)
    files = {
        "report.md": doc.markdown().encode(),
        "report.html": doc.html("wdys report").encode(),
        **doc.figures,
    }
    for name, content in files.items():
        fs.pipe_file(f"{path}/{name}", content)
    return out, doc, data


def write_leaderboard(root: str, rows: list[dict], out: str | None = None) -> tuple[str, Doc]:
    """Write leaderboard.md and leaderboard.html to `out` (default `<root>/reports`), replacing
    the previous page: each file is one write, so a reader sees the old page or the new one."""
    doc = leaderboard_doc(root, rows)
    out = (out or f"{root}/reports").rstrip("/")
    fs, path = filesystem(out)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/{PAGE}.md", doc.markdown().encode())
    fs.pipe_file(f"{path}/{PAGE}.html", doc.html("wdys leaderboard").encode())
    return f"{out}/{PAGE}.md", doc


def keep_server_logs(out: str) -> list[str]:
    """Copy the logs of the run's `vllm serve` processes beside its report: a server's own account of
    the run outlives the temporary folder. On Dask every worker also copies those it started (each
    sees the root: `flows.cluster.check_cluster`), named after the worker as well."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    client = getattr(context.task_runner, "client", None) if context else None  # a Dask runner's client
    kept = copy_server_logs(out)
    if client is not None:
        kept += sorted(path for paths in client.run(copy_server_logs, out).values() for path in paths)
    return kept


def copy_server_logs(out: str, dask_worker: Any = None) -> list[str]:
    """Copy this process's servers' logs to `out` (`vllm-<model>.log`; `vllm-<model>-<worker>.log`
    on a Dask worker, which `Client.run` passes as `dask_worker`)."""
    from backends import vllm_server

    fs, path = filesystem(out)
    worker = f"-{partition_value(str(dask_worker.name))}" if dask_worker is not None else ""
    kept = []
    for model, server in vllm_server.running().items():
        if server.log.exists():
            name = f"vllm-{partition_value(model)}{worker}.log"
            fs.put_file(str(server.log), f"{path}/{name}")
            kept.append(f"{out}/{name}")
    return kept


@task(cache_policy=NO_CACHE, name="report")
def report(root: str, runs: list[dict[str, str]], resamples: int = RESAMPLES, seed: int = 0) -> str:
    """Write the run's report under `<root>/reports/` and publish it as Prefect artifacts; rewrite
    the root's leaderboard page and publish it too (`wdys-leaderboard`, a new version each run)."""
    out, doc, data = write_report(root, runs, resamples=resamples, seed=seed)
    keep_server_logs(out)
    create_markdown_artifact(
        key="wdys-report",
        markdown=f"Report folder: `{out}`\n\n" + doc.markdown(figure_prefix=None),
        description="Paper-style table, gains with intervals and McNemar p-values, per-class accuracy.",
    )
    create_table_artifact(
        key="wdys-gains",
        table=[{k: g[k] for k in GAINS_SHOWN} for g in data.gains],
        description="Gain in top-1 over image-only, paired: 95% bootstrap interval, McNemar exact p.",
    )
    page, board = write_leaderboard(root, data.leaderboard)
    create_markdown_artifact(
        key="wdys-leaderboard",
        markdown=f"Page: `{page}`\n\n" + board.markdown(),
        description="Every encoder x describer of the root per dataset: image-only and best fused top-1.",
    )
    return out
