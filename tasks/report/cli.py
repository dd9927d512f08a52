"""`python -m tasks.report`: a report of every run in the catalog of the named datasets and splits,
written without Prefect."""

from __future__ import annotations

import argparse

from method.stats import RESAMPLES
from sources.registry import list_benchmarks
from storage.catalog import connect, refresh_catalog
from storage.paths import resolve_root
from tasks.report.data import catalog_runs
from tasks.report.leaderboard import leaderboard_rows
from tasks.report.publish import write_leaderboard, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.report",
        description="Write a wdys report (Markdown, HTML, figures) of the runs in a storage root.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", default=None, help="storage root (default: $WDYS_ROOT or ./data)")
    parser.add_argument("--dataset", "--datasets", nargs="+", dest="dataset", help="datasets (default: all)")
    parser.add_argument("--split", "--splits", nargs="+", dest="split", help="splits (default: all)")
    parser.add_argument("--subset", nargs="+", help="row selections, e.g. all-shard256 (default: all)")
    parser.add_argument("--encoder", nargs="+", help="encoder model ids (default: all)")
    parser.add_argument("--describer", nargs="+", help="describer model ids (default: all)")
    parser.add_argument("--class-weights", nargs="+", help="class weightings (default: all)")
    parser.add_argument("--out", default=None, help="output folder (default: <root>/reports/<UTC time>)")
    parser.add_argument(
        "--leaderboard",
        action="store_true",
        help="write only the leaderboard of every run in the root (default folder: <root>/reports)",
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    if args.leaderboard:
        print(leaderboard(root, args.out))
        return
    filters = {
        k: getattr(args, k) for k in ("dataset", "split", "subset", "encoder", "describer", "class_weights")
    }
    runs = catalog_runs(root, filters)
    if not runs:
        raise SystemExit(f"no runs in {root} match {filters}")
    out, _, _ = write_report(root, runs, args.out, args.resamples, args.seed)
    print(f"{out}/report.md")


def leaderboard(root: str, out: str | None) -> str:
    """Refresh the catalog, write the leaderboard page; the path of its Markdown file."""
    with connect(root, refresh_catalog(root, list_benchmarks()), read_only=True) as con:
        rows = leaderboard_rows(con)
    return write_leaderboard(root, rows, out)[0]


if __name__ == "__main__":
    main()
