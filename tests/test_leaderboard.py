"""The leaderboard across runs: two offline encoders x two offline describers on two datasets (a
CIFAR-10 `dev` sample and a user's Parquet dataset, whole), run as two flows on one root. Every cell
of the `leaderboard` view and of its page (Markdown, HTML, the Prefect artifact, `wdys report
--leaderboard`) is checked against the `metrics` view; the artifact of the first run lacks the
second dataset, that of the second has it."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flows.benchmark import benchmark
from tasks.report.cli import main as report_main

ENCODERS = ["offline:conse-lite0-minilm", "offline:conse-lite2-minilm"]
DESCRIBERS = ["offline:lite2-labels", "offline:lite0-labels"]
WEIGHTINGS = ["name", "descriptions"]
COMMON = dict(
    encoders=ENCODERS, describers=DESCRIBERS, class_weights=WEIGHTINGS, class_samples=1, shard_size=8
)
SAMPLE, PETS = 8, 6  # CIFAR-10 dev images sampled; images of the Parquet dataset (all of them)


def pets(folder: Path) -> str:
    folder.mkdir()
    pictures = []
    for i in range(PETS):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (40 * i, 220 - 30 * i, 90)).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    labels = [i % 2 for i in range(PETS)]
    pq.write_table(
        pa.table({"image": pa.array(pictures, pa.binary()), "label": labels}), folder / "test.parquet"
    )
    (folder / "classes.json").write_text(json.dumps(["cat", "dog"]))
    return f"parquet:{folder}?name=mypets"


def artifact_markdown() -> str:
    from prefect.artifacts import Artifact

    artifact = Artifact.get("wdys-leaderboard")
    assert artifact is not None and artifact.type == "markdown"
    return str(artifact.data)


@pytest.fixture(scope="module")
def board(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    benchmark(root=str(root), datasets=["cifar10"], splits=["dev"], limit=SAMPLE, sample_seed=0, **COMMON)
    first = artifact_markdown()
    benchmark(
        root=str(root), datasets=[pets(tmp_path_factory.mktemp("data") / "pets")], splits=["test"], **COMMON
    )
    with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
        metrics = con.sql("select * from metrics").to_arrow_table().to_pylist()
        rows = con.sql("select * from leaderboard").to_arrow_table().to_pylist()
    return root, first, metrics, rows


def expected_cells(metrics: list[dict]) -> dict[tuple, dict]:
    """(encoder, describer, class weights, dataset) -> the numbers a cell must show, made here from
    the `metrics` rows: image-only top-1, the best subset of two or more components, its gain."""
    cells: dict[tuple, dict] = {}
    for m in metrics:
        key = (m["encoder"], m["describer"], m["class_weights"], m["dataset"])
        cell = cells.setdefault(key, {"best": None})
        if m["components"] == "image":
            cell.update(image=m["top1"], images=m["n"] + m["excluded"], full=m["full_split"])
        elif "+" in m["components"] and (cell["best"] is None or m["top1"] > cell["best"][1]):
            cell["best"] = (m["components"], m["top1"], m["gain_top1"])
    return cells


def cell_text(c: dict) -> str:
    components, top1, gain = c["best"]
    cover = "full split" if c["full"] else "sample"
    return f"{c['image']:.2f} → {top1:.2f} ({gain:+.2f}, {components}); {cover}, {c['images']} images"


def test_every_leaderboard_row_matches_the_metrics_view(board):
    _, _, metrics, rows = board
    cells = expected_cells(metrics)
    assert len(rows) == len(cells) == 2 * 2 * 2 * 2  # encoders x describers x weightings x datasets
    for r in rows:
        c = cells[(r["encoder"], r["describer"], r["class_weights"], r["dataset"])]
        assert r["image_top1"] == pytest.approx(c["image"])
        assert (r["best_components"], r["best_top1"], r["gain_top1"]) == pytest.approx(c["best"])
        assert r["gain_top1"] == pytest.approx(r["best_top1"] - r["image_top1"])
        assert (r["images"], r["full_split"]) == (
            (PETS, True) if r["dataset"] == "mypets" else (SAMPLE, False)
        )
        assert r["published_top1"] is None  # open_clip publishes nothing for the offline profile


def table_rows(markdown: str, weighting: str) -> dict[tuple[str, str], dict[str, str]]:
    """The table under `Class weights `<weighting>``: (encoder, describer) -> column -> cell."""
    section = markdown.split(f"### Class weights `{weighting}`", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split(" | ")]  # noqa: E731
    header = split(lines[0])
    return {tuple(cells[:2]): dict(zip(header, cells, strict=True)) for cells in map(split, lines[2:])}


def test_every_page_cell_matches_the_metrics_view(board):
    root, _, metrics, _ = board
    cells = expected_cells(metrics)
    page = (root / "reports" / "leaderboard.md").read_text()
    page_html = (root / "reports" / "leaderboard.html").read_text()
    for weighting in WEIGHTINGS:
        table = table_rows(page, weighting)
        assert len(table) == 4
        for (encoder, describer), columns in table.items():
            assert set(columns) == {"encoder", "describer", "cifar10 (dev)", "mypets (test)", "average"}
            mine = [cells[(encoder, describer, weighting, d)] for d in ("cifar10", "mypets")]
            for dataset, c in zip(("cifar10 (dev)", "mypets (test)"), mine, strict=True):
                assert columns[dataset] == cell_text(c)
                assert html.escape(cell_text(c)) in page_html
            image = sum(c["image"] for c in mine) / 2
            best = sum(c["best"][1] for c in mine) / 2
            average = f"{image:.2f} → {best:.2f} ({best - image:+.2f}); 2 of 2 datasets, samples included"
            assert columns["average"] == average
        averages = [float(c["average"].split(" → ")[1].split()[0]) for c in table.values()]
        assert averages == sorted(averages, reverse=True)  # best first
    assert page.index("`name`") < page.index("`descriptions`")


def test_each_run_updates_the_artifact_and_every_report_has_the_leaderboard(board):
    root, first, _, _ = board
    assert "cifar10 (dev)" in first and "mypets (test)" not in first
    latest = artifact_markdown()
    assert "cifar10 (dev)" in latest and "mypets (test)" in latest
    reports = sorted((root / "reports").glob("*/report.md"))
    assert len(reports) == 2
    board_md = (root / "reports" / "leaderboard.md").read_text()
    section = board_md.split("## Leaderboard", 1)[1]
    assert section in reports[-1].read_text()  # the same tables in the second run's report
    assert "mypets (test)" not in reports[0].read_text()


def test_report_command_writes_the_leaderboard(board, tmp_path, capsys):
    root, _, _, _ = board
    report_main(["--root", str(root), "--leaderboard", "--out", str(tmp_path)])
    assert capsys.readouterr().out.strip() == f"{tmp_path}/leaderboard.md"
    written = (tmp_path / "leaderboard.md").read_text()
    page = (root / "reports" / "leaderboard.md").read_text()
    assert written.split("## Leaderboard", 1)[1] == page.split("## Leaderboard", 1)[1]
    assert (tmp_path / "leaderboard.html").read_text().startswith("<!doctype html>")
