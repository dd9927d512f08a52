"""Evaluate a run in DuckDB: refresh the catalog, read the run's rows of the `metrics` view."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE

from storage.analysis import run_rows
from storage.catalog import connect, refresh_catalog

SHOWN = ("dataset", "split", "encoder", "describer", "class_weights", "components")
FIGURES = ("n", "excluded", "top1", "top5", "mean_per_class_recall", "gain_top1")


def run_metrics(root: str, runs: list[dict[str, str]]) -> list[dict]:
    """The metrics rows of the given runs (each a dict of RUN_KEYS with raw, unslugged values).
    The paired statistics (gains, intervals, McNemar) and the report are `tasks.report`'s."""
    database = refresh_catalog(root)
    with connect(root, database, read_only=True) as con:
        return run_rows(con, "metrics", runs)


def format_table(rows: list[dict]) -> str:
    header = [*SHOWN, *FIGURES]
    body = [
        [str(r[k]) for k in SHOWN]
        + [str(r[k]) if k in ("n", "excluded") else ("" if r[k] is None else f"{r[k]:.2f}") for k in FIGURES]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


@task(cache_policy=NO_CACHE, name="evaluate")
def evaluate(root: str, runs: list[dict[str, str]]) -> list[dict]:
    rows = run_metrics(root, runs)
    create_table_artifact(
        key="wdys-metrics",
        table=[{k: r[k] for k in (*SHOWN, *FIGURES)} for r in rows],
        description="Top-1 / top-5 per component subset (gain in points over image-only).",
    )
    return rows
