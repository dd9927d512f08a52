"""Every view the docs name is in every root's catalog, empty where nothing fed it: an image-only
run of a WebDataset with undecodable images still has `errors` (with those images), `exclusions`,
`describer_cost`...; and a misspelt table in `wdys query` is DuckDB's message on one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from wds_support import isolate_benchmarks, write_wds

from flows.benchmark import benchmark
from storage.connection import create_pending_view

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The views docs/querying.md and README name (a test below keeps this list and the pages equal).
DOCUMENTED = (
    "manifest", "descriptions", "image_embeddings", "text_embeddings", "class_descriptions",
    "class_weights", "predictions", "metrics", "gains", "per_class", "confusion", "describer_cost",
    "errors", "exclusions", "benchmarks", "keys", "models", "pending", "leaderboard",
)  # fmt: skip
BROKEN = [1, 4]


def test_the_documented_views_are_the_ones_the_pages_name():
    text = "\n".join(p.read_text() for p in DOCS)
    assert all(f"`{view}`" in text for view in DOCUMENTED)
    queried = set(re.findall(r"\bfrom ([a-z_]+)\b", " ".join(re.findall(r'SQL="([^"]+)"', text))))
    assert queried <= set(DOCUMENTED)


@pytest.fixture(scope="module")
def image_only_root(tmp_path_factory, prefect_server):
    folder = tmp_path_factory.mktemp("wds")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_benchmarks(monkeypatch, folder)
        write_wds(folder / "data", "test", [0, 1, 2, 0, 1, 2], ["cat", "dog", "bird"], broken=BROKEN)
        root = str(folder / "root")
        benchmark(datasets=[f"wds:{folder / 'data'}"], splits=["test"], describers=[], root=root)
    return root


def test_every_documented_view_answers_on_an_image_only_root(image_only_root):
    with duckdb.connect(f"{image_only_root}/wdys.duckdb", read_only=True) as con:
        create_pending_view(con, image_only_root)
        counts = {view: con.execute(f"select count(*) from {view}").fetchall()[0][0] for view in DOCUMENTED}
        failed = con.sql("select image_id, stage from errors order by image_id").fetchall()
        excluded = con.execute("select sum(images) from exclusions where components = 'image'").fetchall()[0][
            0
        ]
    assert {v for v, n in counts.items() if n == 0} >= {"descriptions", "describer_cost", "pending"}
    assert counts["manifest"] == 6 and counts["metrics"] > 0
    assert failed == [(f"test/{i:07d}", "image") for i in BROKEN]
    assert excluded > 0 and excluded % len(BROKEN) == 0  # the broken images, for each weighting


def test_a_misspelt_table_is_one_line_without_traceback(image_only_root):
    done = subprocess.run(
        [sys.executable, "-m", "wdys", "query", "--root", image_only_root, "select * from metrcs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        'error: Catalog Error: Table with name metrcs does not exist! Did you mean "metrics"?'
    ]
