"""Ad-hoc SQL over a storage root's catalog, read-only: `make query SQL="select * from metrics"`.

python -m storage.query [--root ROOT] "SQL"
"""

from __future__ import annotations

import argparse
import os

import duckdb

from core.errors import UserError
from storage.connection import catalog_file, connect, create_pending_view
from storage.paths import resolve_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storage.query", description=__doc__.splitlines()[0])
    parser.add_argument("sql", help="a DuckDB query over the views (metrics, predictions, descriptions, ...)")
    parser.add_argument("--root", default=None, help="storage root (default: $WDYS_ROOT or ./data)")
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    database = catalog_file(root)
    # Without a catalog yet (a first run that failed on pending items), `pending` still answers.
    made = os.path.exists(database)
    with connect(root, database if made else ":memory:", read_only=made) as con:
        create_pending_view(con, root)
        try:
            con.sql(args.sql).show(max_rows=10_000, max_width=10_000)
        except duckdb.CatalogException as exc:
            if made:
                raise UserError(one_line(exc)) from None
            raise UserError(
                f"no catalog at {database}: run the benchmark first (make run, or wdys run)"
            ) from None
        except duckdb.ProgrammingError as exc:  # a mistake in the SQL: DuckDB's message says which
            raise UserError(one_line(exc)) from None


def one_line(exc: Exception) -> str:
    """DuckDB's message on one line, as its command line prints it, without the query excerpt."""
    lines = str(exc).split("\nLINE ", 1)[0].splitlines()
    return " ".join(line.strip() for line in lines if line.strip())


if __name__ == "__main__":
    main()
