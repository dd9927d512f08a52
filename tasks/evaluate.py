"""Evaluate a run in DuckDB: refresh the catalog, read the run's rows of the `metrics` view."""

from __future__ import annotations

import duckdb
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE as NO_CACHE

from sources.benchmarks import BENCHMARKS_BY_NAME
from sources.registry import list_benchmarks
from storage.analysis import run_rows
from storage.catalog import connect, refresh_catalog
from storage.reference import TOLERANCE_POINTS, split_encoder_precision

SHOWN = ("dataset", "split", "encoder", "describer", "class_weights", "components")
FIGURES = ("n", "excluded", "partial", "top1", "top5", "mean_per_class_recall", "gain_top1")
COUNTS = ("n", "excluded", "partial")
PUBLISHED_KEYS = ("dataset", "split", "subset", "encoder", "class_weights", "components")


def run_metrics(root: str, runs: list[dict[str, str]]) -> list[dict]:
    """The metrics rows of the given runs (each a dict of RUN_KEYS with raw, unslugged values), the
    image-only `templates` rows with open_clip's published top-1 (`published_top1`) where it has one.
    The paired statistics (gains, intervals, McNemar) and the report are `tasks.report`'s."""
    database = refresh_catalog(root, list_benchmarks())
    with connect(root, database, read_only=True) as con:
        return with_published(con, run_rows(con, "metrics", runs))


def with_published(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> list[dict]:
    """`metrics` rows with `published_top1`: open_clip's figure for image-only `templates` rows of a
    listed (model, tag, dataset), else None."""
    published = con.sql("select * from published_baselines").to_arrow_table().to_pylist()
    figures = {tuple(p[k] for k in PUBLISHED_KEYS): p["published_top1"] for p in published}
    return [{**r, "published_top1": figures.get(tuple(r[k] for k in PUBLISHED_KEYS))} for r in rows]


def baseline_checks(rows: list[dict]) -> list[str]:
    """One line per image-only row with a published figure, at the precision the encoder ran; a
    warning when a run of the dataset's evaluation split (under any of its names: ImageNet's `val`
    is also `test`) is more than the tolerance away from it (a wrong build or class list)."""
    lines = []
    for r in rows:
        if r.get("published_top1") is None or r["top1"] is None:
            continue
        gap = r["top1"] - r["published_top1"]
        benchmark = BENCHMARKS_BY_NAME.get(r["dataset"])
        comparable = benchmark is not None and benchmark.evaluation_split_names(r["split"]) is not None
        verdict = "ok" if abs(gap) <= TOLERANCE_POINTS else "differs"
        if not comparable:
            split = benchmark.split if benchmark else "evaluation"
            verdict = f"published on the {split} split: indicative only"
        elif verdict == "differs":
            verdict = (
                f"WARNING: more than {TOLERANCE_POINTS:g} points off; check the model build, "
                "its preprocessing and the class names"
            )
        lines.append(
            f"published baseline: {r['encoder']} on {r['dataset']} {r['split']} ({r['n']} images): "
            f"measured {r['top1']:.2f} at {split_encoder_precision(r['encoder'])[1]}, "
            f"open_clip published {r['published_top1']:.2f} ({gap:+.2f}): {verdict}"
        )
    return lines


def format_table(rows: list[dict]) -> str:
    header = [*SHOWN, *FIGURES]
    body = [
        [str(r[k]) for k in SHOWN]
        + [str(r[k]) if k in COUNTS else ("" if r[k] is None else f"{r[k]:.2f}") for k in FIGURES]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines + baseline_checks(rows))


@task(cache_policy=NO_CACHE, name="evaluate")
def evaluate(root: str, runs: list[dict[str, str]]) -> list[dict]:
    rows = run_metrics(root, runs)
    create_table_artifact(
        key="wdys-metrics",
        table=[{k: r[k] for k in (*SHOWN, *FIGURES)} for r in rows],
        description="Top-1 / top-5 per combination of components (gain in points over image-only).",
    )
    return rows
