"""Evaluate a run in DuckDB: refresh the catalog, read the run's rows of the `metrics` view."""

from __future__ import annotations

import pyarrow as pa
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE

from storage.catalog import RUN_KEYS, connect, refresh_catalog
from storage.paths import partition_value

SHOWN = ("dataset", "split", "encoder", "describer", "class_weights", "components")
FIGURES = ("n", "excluded", "top1", "top5", "mean_per_class_recall", "gain_top1")


def run_metrics(root: str, runs: list[dict[str, str]]) -> list[dict]:
    """The metrics rows of the given runs (each a dict of RUN_KEYS with raw, unslugged values)."""
    database = refresh_catalog(root)
    wanted = pa.Table.from_pylist([{k: partition_value(run[k]) for k in RUN_KEYS} for run in runs])
    with connect(root, database, read_only=True) as con:
        con.register("wanted", wanted)
        return (
            con.sql(f"select m.* from metrics m semi join wanted w using ({', '.join(RUN_KEYS)})")
            .to_arrow_table()
            .to_pylist()
        )


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
