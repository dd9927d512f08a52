"""Each remote byte once per run and once per machine (issue 23): the hub stand-in counts the file
bytes it sends while a `--limit` trial, a full run on a cold cache and a second full run read a
multi-shard `wds:` copy with images of 10 kB or more, and the same images as a Parquet export. A
run is the plan and one ingest per shard, each as a fresh worker process would read (no index or
filesystem kept in memory; perf/remote_bytes.py, whose figures `make bench` prints)."""

from __future__ import annotations

import json

import pytest

from core.guard import guarded
from perf.remote_bytes import run, runs, write_parquet_copy, write_wds_copy
from sources import remote
from sources.fetch import main as fetch_main


@pytest.mark.parametrize(
    ("layout", "write"),
    [
        ("wds", lambda folder: write_wds_copy(folder, images=200, shards=4)),
        ("parquet", lambda folder: write_parquet_copy(folder, images=200, row_group=20)),
    ],
)
def test_a_copy_is_downloaded_once(tmp_path, fake_hub, layout, write):
    size = write(tmp_path / layout)
    fake_hub.add(f"someone/{layout}", tmp_path / layout)
    sent = runs(fake_hub, f"{layout}:hf://datasets/someone/{layout}", limit=20, shard_size=50)
    assert sent["trial"] <= 0.25 * size
    assert sent["full"] <= 1.1 * size
    assert sent["again"] <= 0.05 * size


def test_the_cache_is_verified_counted_and_cleared(tmp_path, fake_hub, capsys, monkeypatch):
    """Bytes kept under another etag or a damaged range list are not used; `wdys datasets` says how
    much a benchmark has cached and `--clear-cache` removes it."""
    write_wds_copy(tmp_path / "wds", images=40, shards=2)
    fake_hub.add("clip-benchmark/wds_vtab-caltech101", tmp_path / "wds")
    location = "hf://datasets/clip-benchmark/wds_vtab-caltech101"
    run(f"wds:{location}", None, 20)
    held = remote.cached_bytes(location)
    assert (
        held > 0
        and remote.repo_folder(location).parent.name == "datasets--clip-benchmark--wds_vtab-caltech101"
    )
    for listed in (remote.repo_folder(location) / "blobs").glob("*.json"):
        meta = json.loads(listed.read_text())
        listed.write_text(json.dumps(meta | {"size": meta["size"] + 1}))  # not the remote's size
    for index in (remote.repo_folder(location) / "index").glob("*.json"):
        index.unlink()
    before = fake_hub.bytes_sent
    run(f"wds:{location}", None, 20)
    assert fake_hub.bytes_sent - before >= 0.9 * held  # read again, not taken from a doubtful cache
    monkeypatch.setenv("WDYS_SHARED_DATASETS", str(tmp_path / "none"))
    monkeypatch.delenv("WDYS_DATA_DIR", raising=False)
    monkeypatch.delenv("WDYS_CALTECH101_DIR", raising=False)
    assert guarded(fetch_main, []) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("caltech101 "))
    assert f"cached here: {remote.cached_bytes(location) / 1e6:,.1f} MB" in line
    assert guarded(fetch_main, ["--clear-cache", "caltech101"]) == 0
    assert "caltech101: removed" in capsys.readouterr().out
    assert remote.cached_bytes(location) == 0 and not remote.repo_folder(location).exists()


def test_the_flow_itself_downloads_each_byte_once(prefect_server, tmp_path, fake_hub):
    """The same figures through the real flow (image-only, every stage, one process of four task
    threads): a `--limit` trial, a full run on the cache the trial left, then a full run into a fresh
    root, which finds every byte on this machine already."""
    from flows.benchmark import benchmark

    size = write_wds_copy(tmp_path / "wds", images=96, shards=4)
    fake_hub.add("someone/wds_flow", tmp_path / "wds")
    run = {"datasets": ["wds:hf://datasets/someone/wds_flow"], "splits": ["test"], "describers": []}
    run |= {"encoders": ["offline:conse-lite0-minilm"], "class_weights": ["name"], "shard_size": 32}
    sent = []
    for root, limit in (("trial", 12), ("full", None), ("fresh", None)):
        before = fake_hub.bytes_sent
        result = benchmark(**run, root=str(tmp_path / root), limit=limit)
        assert {r["n"] for r in result["metrics"]} == {limit or 96}
        sent.append(fake_hub.bytes_sent - before)
    trial, full, fresh = sent
    assert trial <= 0.25 * size and trial + full <= 1.1 * size and fresh <= 0.05 * size
