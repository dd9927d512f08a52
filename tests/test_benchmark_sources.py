"""Every registered benchmark from its public source, against local stand-ins: the hub
(tests/fake_hub.py) for CLIP_benchmark's WebDataset copies and the Parquet exports, and
data.csail.mit.edu for Places365's official archives, read through torchvision's `Places365` class
(downloaded once, unpacked under `$WDYS_DATA_DIR`, read again without a request). torchvision pins
the archives' URL base and MD5 sums as class attributes; the stand-in (tests/wds_support.py) points
them at itself and its tiny archives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_hub import FakeHub
from wds_support import image_bytes, isolate_benchmarks, serve_places365_archives, write_wds

from core.errors import BadDataset
from core.guard import guarded
from deployments.deploy import PAPER
from sources import benchmarks
from sources.benchmarks import BENCHMARK_LIST, BENCHMARKS_BY_NAME, PAPER_BENCHMARKS
from sources.fetch import main as fetch_main
from sources.images import decode_manifest
from sources.registry import open_dataset
from storage.keys import Selection
from storage.paths import split_dataset_spec
from tasks.plan import plan_dataset

LABELS = [0, 364, 165]


@pytest.fixture
def archive_server(tmp_path, monkeypatch):
    yield from serve_places365_archives(tmp_path / "www", LABELS, monkeypatch)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A data dir of its own, no shared or embedded copy, no overrides."""
    isolate_benchmarks(monkeypatch, tmp_path)
    monkeypatch.setenv("WDYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(benchmarks, "EMBEDDED_DATASETS", tmp_path / "no-embedded-copy")


def serve_every_source(root: Path, hub: FakeHub) -> None:
    """A tiny copy of each hub-sourced benchmark at its built-in location, in its source's layout."""
    for bench in BENCHMARK_LIST:
        layout, location, _ = split_dataset_spec(bench.hub or "")
        if layout is None:
            continue
        org, repo, *sub = location.removeprefix("hf://datasets/").split("/")
        repo_id = f"{org}/{repo}"
        folder = root / repo_id
        labels = [0, bench.num_classes - 1, 1]
        if layout == "wds":
            write_wds(folder, bench.hub_split, labels, bench.class_names)
        else:
            images = pa.array([{"bytes": image_bytes(i), "path": None} for i in range(len(labels))])
            path = folder / (sub[0] if sub else "data") / f"{bench.hub_split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"image": images, "label": pa.array(labels, pa.int64())}), path)
        hub.add(repo_id, folder)


def test_the_paper_deployments_datasets_plan_against_the_stand_ins(tmp_path, fake_hub, archive_server):
    """What `prefect deployment run benchmark/paper` plans first: every one of its datasets opens
    from its public source; a full run of these 3-image copies is refused by size."""
    serve_every_source(tmp_path / "hub", fake_hub)
    assert PAPER["datasets"] == sorted(PAPER_BENCHMARKS) and len(PAPER_BENCHMARKS) == 10
    for name in PAPER["datasets"]:
        for split in PAPER["splits"]:
            plan = plan_dataset.fn(Selection(name, split, limit=2, seed=0, shard_size=1))
            assert len(plan.shards) == 2 and len(plan.class_names) == BENCHMARKS_BY_NAME[name].num_classes
            with pytest.raises(BadDataset, match=f"has {BENCHMARKS_BY_NAME[name].size} images but the copy"):
                plan_dataset.fn(Selection(name, split))
    repos = {
        p.split("/")[2] + "/" + p.split("/")[3] for _, p, _ in fake_hub.requests if p.startswith("/datasets/")
    }
    assert len(repos) == 9  # every hub-sourced benchmark was read from the stand-in


def test_places365_downloads_its_archives_once_and_reads_them(archive_server, tmp_path):
    source = open_dataset("places365", "val")
    names = BENCHMARKS_BY_NAME["places365"].class_names
    manifest = source.manifest([0, 1, 2])
    assert [names[i] for i in manifest.column("label").to_pylist()] == [names[i] for i in LABELS]
    assert decode_manifest(manifest)[1] == [None, None, None]
    assert manifest.column("uri")[0].as_py().startswith(str(tmp_path / "data" / "places365" / "torchvision"))
    assert source.num_rows == 3 and source.expected_rows == 36_500
    # torchvision probes each URL for a redirect with a GET, then downloads it
    assert sorted(set(archive_server)) == ["/filelist_places365-standard.tar", "/val_256.tar"]
    asked = len(archive_server)
    again = open_dataset("places365", "test")  # `test` names the evaluation split: no new download
    assert again.num_rows == 3 and len(archive_server) == asked


def test_wdys_datasets_lists_every_benchmark_with_a_source(tmp_path, capsys):
    assert guarded(fetch_main, []) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [b.name for b in BENCHMARK_LIST]
    for line, bench in zip(lines, BENCHMARK_LIST, strict=True):
        assert f"{bench.size:,} images" in line and f"{bench.num_classes} classes" in line
        assert " hub: " in line or " archive: torchvision:Places365" in line
    (tmp_path / "data" / "dtd" / "test" / "banded").mkdir(parents=True)
    guarded(fetch_main, [])
    dtd = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dtd "))
    assert dtd.split() == ["dtd", "test", "1,880", "images", "47", "classes", "local", "copy:"] + [
        str(tmp_path / "data" / "dtd"),
        "(imagefolder,",
        "test)",
        "[present]",
    ]
    # the columns line up whatever the names' lengths
    assert len({line.index(" images") for line in lines}) == 1


def test_fetch_resumes_a_part_verifies_the_count_then_runs_read_the_copy(
    tmp_path, fake_hub, monkeypatch, capsys
):
    bench = BENCHMARKS_BY_NAME["caltech101"]
    labels = [0, 101, 5, 7, 9]
    write_wds(tmp_path / "hub" / "wds", "test", labels, bench.class_names, shards=2)
    fake_hub.add("clip-benchmark/wds_vtab-caltech101", tmp_path / "hub" / "wds")
    data = tmp_path / "data"
    assert guarded(fetch_main, ["--fetch", "caltech101"]) == 2  # 5 images: not the 6,085 of the split
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: caltech101: the copy at {data / '.caltech101.fetching'} holds 5 images, the evaluation "
        "split has 6085"
    ]
    assert not (data / "caltech101").exists()  # a wrong copy never becomes the one runs read
    shard = (tmp_path / "hub" / "wds" / "test" / "0.tar").read_bytes()
    (data / ".caltech101.fetching" / "test" / "0.tar").unlink()
    (data / ".caltech101.fetching" / "test" / "0.tar.part").write_bytes(shard[:3000])  # an interrupted try
    fake_hub.requests.clear()
    monkeypatch.setitem(BENCHMARKS_BY_NAME, "caltech101", dataclasses.replace(bench, size=5))
    assert guarded(fetch_main, ["--fetch", "caltech101"]) == 0
    out = capsys.readouterr().out
    assert "0.tar: resuming at 3,000 of" in out and "caltech101: 5 images in" in out
    ranges = [r for _, p, r in fake_hub.requests if p.endswith("/0.tar")]
    assert ranges and ranges[0].startswith("bytes=3000-")  # only the missing part was asked for
    assert not any(p.endswith("/1.tar") for _, p, _ in fake_hub.requests)  # finished files are kept
    assert (data / "caltech101" / "test" / "0.tar").read_bytes() == shard
    fake_hub.requests.clear()
    source = open_dataset("caltech101", "test")  # from the fetched copy, not the hub
    assert source.note.startswith(f"caltech101 test: wds {data / 'caltech101'}") and not fake_hub.requests
    assert [source.class_names[i] for i in source.manifest([1]).column("label").to_pylist()] == [
        bench.class_names[101]
    ]


def test_fetch_copies_a_parquet_source_and_counts_an_archive(
    tmp_path, fake_hub, archive_server, monkeypatch, capsys
):
    serve_every_source(tmp_path / "hub", fake_hub)
    food = BENCHMARKS_BY_NAME["food101"]
    monkeypatch.setitem(BENCHMARKS_BY_NAME, "food101", dataclasses.replace(food, size=3))
    assert guarded(fetch_main, ["--fetch", "food101", "places365"]) == 2  # Places365: 3 of 36,500
    assert (tmp_path / "data" / "food101" / "data" / "validation-00000-of-00001.parquet").is_file()
    out, err = capsys.readouterr()
    assert "food101: 3 images in" in out
    assert err.strip().splitlines()[-1] == (  # after torchvision's download progress bars
        f"error: places365: the copy at {tmp_path / 'data' / 'places365' / 'torchvision'} holds 3 images, "
        "the evaluation split has 36500"
    )
    fake_hub.requests.clear()
    source = open_dataset("food101", "test")  # the fetched copy, found under the hub's split name
    assert source.num_rows == 3 and not fake_hub.requests


def test_every_registered_size_is_in_the_docs_with_its_source():
    """docs/datasets.md's tables give each benchmark's registered size and where it comes from."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    rows = {}
    for line in docs.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = [c.strip("`") for c in cells if c.startswith("`") and c.strip("`") in BENCHMARKS_BY_NAME]
        if line.startswith("|") and names:
            rows[names[0]] = cells
    assert set(rows) == set(BENCHMARKS_BY_NAME)
    for name, cells in rows.items():
        assert any(f"{BENCHMARKS_BY_NAME[name].size:,}" in c for c in cells), name
        source = cells[3] if name in PAPER_BENCHMARKS else cells[4]
        assert any(w in source for w in ("dataset card", "DataComp", "CLIP_benchmark", "paper", "TFDS")), name
    assert BENCHMARKS_BY_NAME["fer2013"].size == 7_178 and BENCHMARKS_BY_NAME["caltech101"].size == 6_085


def test_a_partial_places365_unpacking_is_refused_and_fetch_completes_it(
    prefect_server, archive_server, tmp_path, monkeypatch, capsys
):
    """`val_256` holding fewer images than the devkit's file list: a run fails in one line naming
    both counts, exit status 2, before any model loads; `wdys datasets --fetch` unpacks it again
    from the archive it kept (no new download)."""
    from flows.benchmark import main as flow_main

    open_dataset("places365", "val")  # downloads and unpacks the 3 images
    images = tmp_path / "data" / "places365" / "torchvision" / "val_256"
    (images / "Places365_val_00000002.jpg").unlink()
    expected = (
        f"places365: {images} holds 2 of the 3 images its file list names (unpacking cut short? "
        "Places365_val_00000002.jpg is missing); `wdys datasets --fetch places365` completes it"
    )
    with pytest.raises(BadDataset) as refused:
        open_dataset("places365", "val")
    assert str(refused.value) == expected
    root = tmp_path / "root"
    args = ["--datasets", "places365", "--splits", "val", "--root", str(root), "--image-only", "--limit", "2"]
    assert guarded(flow_main, args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {expected}"] and not (root / "manifest").exists()
    places = BENCHMARKS_BY_NAME["places365"]
    monkeypatch.setitem(BENCHMARKS_BY_NAME, "places365", dataclasses.replace(places, size=3))
    asked = len(archive_server)
    assert guarded(fetch_main, ["--fetch", "places365"]) == 0
    assert open_dataset("places365", "val").num_rows == 3
    assert (images / "Places365_val_00000002.jpg").is_file()
    assert "/val_256.tar" not in archive_server[asked:]
