"""Ad-hoc SQL over a storage root's catalog, read-only: `make query SQL="select * from metrics"`.

python -m storage.query [--root ROOT] "SQL"
"""

from __future__ import annotations

import argparse
import os

from core.errors import UserError
from storage.catalog import connect, local_catalog_path
from storage.paths import catalog_path, is_local, resolve_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storage.query", description=__doc__.splitlines()[0])
    parser.add_argument("sql", help="a DuckDB query over the views (metrics, predictions, descriptions, ...)")
    parser.add_argument("--root", default=None, help="storage root (default: $WDYS_ROOT or ./data)")
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    database = catalog_path(root) if is_local(root) else local_catalog_path(root)
    if not os.path.exists(database):
        raise UserError(f"no catalog at {database}: run the benchmark first (make run, or wdys run)")
    with connect(root, database, read_only=True) as con:
        con.sql(args.sql).show(max_rows=10_000, max_width=10_000)


if __name__ == "__main__":
    main()
