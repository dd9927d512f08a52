"""The data of a report, read from the catalog: the runs' metrics, gains, per-class rows, confusion
counts, describer cost and benchmarks, and the order in which weightings are shown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from method.fusion import CLASS_WEIGHTINGS, PAPER_WEIGHTINGS, component_order
from method.stats import RESAMPLES
from sources.registry import list_benchmarks
from storage.analysis import BASELINE, run_rows, with_intervals
from storage.catalog import connect, refresh_catalog
from storage.keys import run_answer_keys
from storage.paths import partition_value
from storage.schemas import ANSWER_KEYS, DATA_KEYS, RUN_KEYS
from tasks.evaluate import with_published

MAIN_WEIGHTING = "templates"
MODEL_KEYS = tuple(k for k in RUN_KEYS if k not in DATA_KEYS and k != "class_weights")
COMPONENTS = component_order()
VARIANTS = [c for c in COMPONENTS if c != BASELINE]
MAX_CONFUSION_CLASSES = 20  # a confusion matrix figure only for datasets with this many classes or fewer


@dataclass
class ReportData:
    runs: list[dict[str, str]]
    metrics: list[dict]
    gains: list[dict]
    per_class: list[dict]
    confusion: list[dict]
    cost: list[dict]
    benchmarks: list[dict]
    root: str = ""
    resamples: int = RESAMPLES
    seed: int = 0
    leaderboard: list[dict] = field(default_factory=list)  # every run of the root, not only these


def collect(root: str, runs: list[dict[str, str]], resamples: int = RESAMPLES, seed: int = 0) -> ReportData:
    database = refresh_catalog(root, list_benchmarks())
    with connect(root, database, read_only=True) as con:
        views = {
            r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()
        }

        def rows(view: str, wanted: list[dict], keys: Sequence[str] = RUN_KEYS) -> list[dict]:
            return run_rows(con, view, wanted, keys) if view in views else []

        benchmarks = rows("benchmarks", runs, DATA_KEYS)
        classes: dict[tuple[str, ...], int] = {
            (b["dataset"], b["split"], b["subset"]): b["classes"] for b in benchmarks
        }
        main = [r for r in runs if r["class_weights"] == main_weighting(runs)]
        small = [
            r
            for r in main
            if classes.get(tuple(partition_value(r[k]) for k in DATA_KEYS), 0) <= MAX_CONFUSION_CLASSES
        ]
        return ReportData(
            runs=runs,
            metrics=with_published(con, rows("metrics", runs)) if "metrics" in views else [],
            gains=with_intervals(rows("gains", runs), resamples, seed),
            per_class=rows("per_class", main),
            confusion=rows("confusion", small),
            cost=rows("describer_cost", [k for r in runs for k in run_answer_keys(r)], ANSWER_KEYS),
            benchmarks=benchmarks,
            root=root,
            resamples=resamples,
            seed=seed,
            leaderboard=con.sql("select * from leaderboard").to_arrow_table().to_pylist()
            if "leaderboard" in views
            else [],
        )


def main_weighting(runs: Sequence[dict[str, str]]) -> str:
    present = {r["class_weights"] for r in runs}
    if MAIN_WEIGHTING in present or not present:
        return MAIN_WEIGHTING
    return min(present, key=weighting_order)


def weighting_note(weighting: str) -> str:
    return "" if weighting in PAPER_WEIGHTINGS else " (an extension beyond the paper)"


def weighting_order(w: str) -> tuple[int, int]:
    return (
        w != MAIN_WEIGHTING,
        CLASS_WEIGHTINGS.index(w) if w in CLASS_WEIGHTINGS else len(CLASS_WEIGHTINGS),
    )


def catalog_runs(root: str, filters: dict[str, list[str] | None]) -> list[dict[str, str]]:
    """The runs in the catalog (distinct RUN_KEYS of `metrics`) that match every given filter."""
    database = refresh_catalog(root, list_benchmarks())
    with connect(root, database, read_only=True) as con:
        runs = con.sql(f"select distinct {', '.join(RUN_KEYS)} from metrics").to_arrow_table().to_pylist()
    for key, values in filters.items():
        if values:
            wanted = {partition_value(v) for v in values}
            runs = [r for r in runs if r[key] in wanted]
    return sorted(runs, key=lambda r: tuple(r.values()))
