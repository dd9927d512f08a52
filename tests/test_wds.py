"""CLIP_benchmark's WebDataset layout as a source (`wds:<folder or URL>`), local and through the hub
stand-in (tests/fake_hub.py, a real HTTP server that `huggingface_hub`'s `HfFileSystem` talks to);
registered benchmarks read from their hub source, a copy of the wrong size refused before a full
run, and a gated repository's one-line error."""

from __future__ import annotations

import tarfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from wds_support import add_member, isolate_benchmarks, write_wds

from core.errors import BadDataset, DatasetNotFound
from core.guard import user_message
from sources import benchmarks
from sources.benchmarks import BENCHMARKS_BY_NAME, PAPER_BENCHMARKS
from sources.images import decode_manifest
from sources.registry import BENCHMARKS, open_dataset
from storage.keys import Selection
from storage.paths import dataset_name
from tasks.plan import plan_dataset, select_rows

CLASSES = ["cat", "dog", "bird"]
LABELS = [2, 0, 1, 1, 0, 2, 2]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate_benchmarks(monkeypatch, tmp_path)


def labels_of(source, rows=None) -> list[str]:
    rows = list(range(source.num_rows)) if rows is None else rows
    return [source.class_names[i] for i in source.manifest(rows).column("label").to_pylist()]


def test_wds_folder_in_clip_benchmarks_layout(tmp_path):
    write_wds(tmp_path / "tiny", "test", LABELS, CLASSES, shards=3, broken=[4])
    source = open_dataset(f"wds:{tmp_path / 'tiny'}", "test")
    assert source.class_names == tuple(CLASSES) and source.num_rows == len(LABELS)
    assert labels_of(source) == [CLASSES[i] for i in LABELS]
    assert "3 shard(s)" in source.note and "1 templates" in source.note
    manifest = source.manifest([6, 0, 4])
    assert manifest.column("image_id").to_pylist() == ["test/0000006", "test/0000000", "test/0000004"]
    images, errors = decode_manifest(manifest)  # jpg, png and webp members; sample 4 is no image
    assert [e is None for e in errors] == [True, True, False] and images[0].size == (6, 4)
    assert dataset_name(f"wds:{tmp_path / 'tiny'}").startswith("tiny-")


def test_shards_without_nshards_are_read_in_numeric_order(tmp_path):
    labels = [i % 3 for i in range(12)]
    write_wds(tmp_path, "test", labels, CLASSES, shards=12, nshards_file=False)  # 10.tar after 2.tar
    assert labels_of(open_dataset(f"wds:{tmp_path}", "test")) == [CLASSES[i] for i in labels]


def test_broken_copies_are_one_line_errors(tmp_path):
    write_wds(tmp_path / "a", "test", [0, 1], CLASSES)
    with pytest.raises(DatasetNotFound, match="no shards for split 'val'"):
        open_dataset(f"wds:{tmp_path / 'a'}", "val")
    with tarfile.open(tmp_path / "a" / "test" / "1.tar", "a") as tar:
        add_member(tar, "orphan.jpg", b"x")  # a sample without its .cls
    with pytest.raises(BadDataset, match="1 sample\\(s\\) without a .cls label, e.g. 'orphan'"):
        open_dataset(f"wds:{tmp_path / 'a'}", "test")
    write_wds(tmp_path / "b", "test", [0, 7], CLASSES)
    with pytest.raises(BadDataset, match="label 7, outside the 3 classes"):
        open_dataset(f"wds:{tmp_path / 'b'}", "test")
    write_wds(tmp_path / "c", "test", [0, 1], None)
    with pytest.raises(BadDataset, match="no classnames.txt"):
        open_dataset(f"wds:{tmp_path / 'c'}", "test")
    (tmp_path / "a" / "test" / "1.tar").unlink()
    with pytest.raises(DatasetNotFound, match="shard .*1.tar is missing"):
        open_dataset(f"wds:{tmp_path / 'a'}", "test")


def test_wds_through_the_hub_stand_in_reads_ranges_of_each_shard(tmp_path, fake_hub):
    write_wds(tmp_path / "repo", "test", LABELS, CLASSES, shards=2)
    fake_hub.add("clip-benchmark/wds_tiny", tmp_path / "repo")
    source = open_dataset("wds:hf://datasets/clip-benchmark/wds_tiny", "test")
    assert labels_of(source) == [CLASSES[i] for i in LABELS]
    assert decode_manifest(source.manifest([5]))[1] == [None]
    downloads = [(p, r) for m, p, r in fake_hub.requests if "/resolve/" in p and p.endswith(".tar")]
    assert {p.rsplit("/", 1)[-1] for p, _ in downloads} == {"0.tar", "1.tar"}
    assert all(r and r.startswith("bytes=") for _, r in downloads)  # ranged reads, never a whole copy


def test_a_rewritten_shard_of_the_same_size_is_indexed_again(tmp_path):
    """A process indexes a split once; a shard rewritten with other labels is read anew even where
    tar's 10 KiB records keep its size (the stale index once served the old labels)."""
    write_wds(tmp_path / "tiny", "test", [0, 1, 2], CLASSES, shards=1)
    shard = tmp_path / "tiny" / "test" / "0.tar"
    size = shard.stat().st_size
    assert labels_of(open_dataset(f"wds:{tmp_path / 'tiny'}", "test")) == ["cat", "dog", "bird"]
    write_wds(tmp_path / "tiny", "test", [2, 2, 0], CLASSES, shards=1)
    assert shard.stat().st_size == size
    assert labels_of(open_dataset(f"wds:{tmp_path / 'tiny'}", "test")) == ["bird", "bird", "cat"]


def test_registered_benchmark_from_its_hub_source(tmp_path, fake_hub):
    """ImageNet-1k's source is CLIP_benchmark's public wds_imagenet1k (`test` = ImageNet val); the
    copy's class names (CLIP's) are matched to the benchmark's list, labels stay on their class."""
    names = list(BENCHMARKS_BY_NAME["imagenet1k"].class_names)
    labels = [0, 999, 500, 1]
    write_wds(tmp_path / "repo", "test", labels, names)
    fake_hub.add("clip-benchmark/wds_imagenet1k", tmp_path / "repo")
    source = open_dataset("imagenet1k", "val")
    assert labels_of(source) == [names[i] for i in labels]
    assert source.expected_rows == 50_000 and source.num_rows == 4
    assert source.manifest([0]).column("image_id").to_pylist() == ["val/0000000"]
    plan = plan_dataset.fn(Selection("imagenet1k", "val", limit=3, seed=0, shard_size=2))
    assert [r for s in plan.shards for r in s] == select_rows(4, 3, 0)  # a sample runs, as before
    with pytest.raises(BadDataset) as refused:
        plan_dataset.fn(Selection("imagenet1k", "val"))
    message = str(refused.value)
    assert "\n" not in message
    assert "full evaluation split has 50000 images but the copy read holds 4" in message


def test_a_local_wds_copy_of_a_registered_benchmark(tmp_path, monkeypatch):
    write_wds(tmp_path / "cifar10", "test", [9, 0, 3], BENCHMARKS_BY_NAME["cifar10"].class_names)
    monkeypatch.setenv("WDYS_DATA_DIR", str(tmp_path))
    source = open_dataset("cifar10", "test")
    assert labels_of(source) == ["truck", "airplane", "cat"]
    assert source.note.startswith("cifar10 test: wds ")


def test_a_gated_source_says_what_to_do(tmp_path, fake_hub, monkeypatch):
    write_wds(tmp_path / "repo", "test", [0], ["tench"])
    fake_hub.add("ILSVRC/imagenet-1k", tmp_path / "repo", gated=True)
    monkeypatch.setenv("WDYS_IMAGENET1K_HUB", "wds:hf://datasets/ILSVRC/imagenet-1k")
    with pytest.raises(DatasetNotFound) as refused:
        open_dataset("imagenet1k", "val")
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        "imagenet1k: hf://datasets/ILSVRC/imagenet-1k is gated: accept its terms at "
        "https://huggingface.co/datasets/ILSVRC/imagenet-1k and set HF_TOKEN to a token of that account"
    )
    with pytest.raises(Exception) as raw:  # a user's own `wds:` dataset in a gated repo
        open_dataset("wds:hf://datasets/ILSVRC/imagenet-1k", "test")
    message = user_message(raw.value)
    assert message.startswith("the hub refused a gated repository (") and message.endswith("set HF_TOKEN")


def test_an_unreachable_source_names_what_was_tried(monkeypatch):
    monkeypatch.setattr(benchmarks, "EMBEDDED_DATASETS", Path("/nonexistent"))
    monkeypatch.setenv("WDYS_CIFAR10_HUB", "wds:memory://nowhere/cifar10")
    with pytest.raises(DatasetNotFound, match="the source wds:memory://nowhere/cifar10 could not be read"):
        open_dataset("cifar10", "test")


def test_wds_runs_through_the_whole_flow_locally_and_from_the_hub(prefect_server, tmp_path, fake_hub):
    from flows.benchmark import benchmark

    write_wds(tmp_path / "repo", "test", LABELS, CLASSES, shards=2, broken=[3])
    fake_hub.add("someone/wds_tiny", tmp_path / "repo")
    for dataset in (f"wds:{tmp_path / 'repo'}", "wds:hf://datasets/someone/wds_tiny"):
        root = tmp_path / dataset_name(dataset)
        result = benchmark(
            datasets=[dataset],
            splits=["test"],
            root=str(root),
            shard_size=4,
            class_samples=1,
            class_weights=["name"],
        )
        assert {(r["n"], r["excluded"], r["full_split"]) for r in result["metrics"]} == {(6, 1, True)}
        with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
            labels = [r[0] for r in con.sql("select label from manifest order by image_id").fetchall()]
            errors = con.sql("select distinct image_id, stage from errors where stage = 'image'").fetchall()
        assert labels == LABELS and errors == [("test/0000003", "image")]
        report = (root / "reports").glob("**/report.md")
        assert any("| full split |" in p.read_text() for p in report)


def test_a_full_run_of_a_copy_of_the_wrong_size_is_refused_in_one_line(
    prefect_server, tmp_path, monkeypatch, capsys
):
    """`python -m flows.benchmark` (what `wdys run` runs) on a 3-image CIFAR-10 test copy: exit
    status 2, one line naming both counts, before any shard task."""
    from core.guard import guarded
    from flows.benchmark import main

    write_wds(tmp_path / "cifar10", "test", [9, 0, 3], BENCHMARKS_BY_NAME["cifar10"].class_names)
    monkeypatch.setenv("WDYS_DATA_DIR", str(tmp_path))
    root = tmp_path / "root"
    args = ["--datasets", "cifar10", "--splits", "test", "--root", str(root), "--image-only"]
    assert guarded(main, args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: cifar10 test: the full evaluation split has 10000 images but the copy read holds 3 (wds "
        f"{tmp_path / 'cifar10'} (test): 3 samples in 2 shard(s), 10 classes, 1 templates in "
        "zeroshot_classification_templates.txt); use a complete copy (see `wdys datasets`), or --limit N "
        "to run a sample"
    ]
    assert not (root / "manifest").exists()


def test_clip_benchmarks_collection_is_registered_from_its_wds_copies(tmp_path, fake_hub):
    """`--datasets imagenet-r`: CLIP_benchmark's wds_imagenet-r, its class names from the copy."""
    assert {"imagenet-r", "imagenet-a", "imagenetv2", "imagenet_sketch", "flowers", "eurosat"} <= set(
        BENCHMARKS
    )
    assert "imagenet-r" not in PAPER_BENCHMARKS
    names = [f"class {i}" for i in range(200)]
    write_wds(tmp_path / "repo", "test", [199, 0, 7], names)
    fake_hub.add("clip-benchmark/wds_imagenet-r", tmp_path / "repo")
    source = open_dataset("imagenet-r", "test")
    assert labels_of(source) == ["class 199", "class 0", "class 7"]
    assert source.expected_rows == 30_000 and len(source.class_names) == 200
    write_wds(tmp_path / "flowers", "test", [0], ["a", "b"])
    fake_hub.add("clip-benchmark/wds_vtab-flowers", tmp_path / "flowers")  # CLIP_benchmark's vtab/flowers
    with pytest.raises(BadDataset, match="has 2 classes, but vtab/flowers \\('flowers'\\) has 102"):
        open_dataset("flowers", "test")


def test_a_copy_cut_short_is_refused_naming_the_file(tmp_path):
    """A 20-sample shard cut in half (mid-member), one cut at a member boundary (no end-of-archive
    blocks) and a Parquet file without its footer: each one line naming the file."""
    write_wds(tmp_path / "a", "test", [i % 3 for i in range(20)], CLASSES, shards=1)
    shard = tmp_path / "a" / "test" / "0.tar"
    whole = shard.read_bytes()
    with tarfile.open(shard) as tar:
        boundary = tar.getmembers()[24].offset  # the header of sample 12's image
    shard.write_bytes(whole[: boundary + 600])  # half way, inside sample 12's image
    with pytest.raises(BadDataset) as cut:
        open_dataset(f"wds:{tmp_path / 'a'}", "test")
    assert str(cut.value).startswith(f"{shard}: the shard is cut short (it ends inside member 's0000012.jpg'")
    shard.write_bytes(whole[:boundary])
    with pytest.raises(BadDataset, match="ends after member 's0000011.cls' without tar's end-of-archive"):
        open_dataset(f"wds:{tmp_path / 'a'}", "test")
    shard.write_bytes(whole)
    assert open_dataset(f"wds:{tmp_path / 'a'}", "test").num_rows == 20
    table = pa.table({"image": pa.array([b"x"], pa.binary()), "label": pa.array([0], pa.int64())})
    pq.write_table(table, tmp_path / "test.parquet")
    (tmp_path / "classes.json").write_text('["a"]')
    data = (tmp_path / "test.parquet").read_bytes()
    (tmp_path / "test.parquet").write_bytes(data[:-20])
    with pytest.raises(BadDataset) as footless:
        open_dataset(f"parquet:{tmp_path / 'test.parquet'}", "test")
    message = str(footless.value)
    assert message.startswith(f"parquet {tmp_path / 'test.parquet'}: not a complete Parquet file (")
    assert "\n" not in message


def test_a_run_of_a_users_copy_cut_short_fails_in_one_line_before_any_model(prefect_server, tmp_path, capsys):
    from core.guard import guarded
    from flows.benchmark import main

    write_wds(tmp_path / "mine", "test", [i % 3 for i in range(20)], CLASSES, shards=2)
    shard = tmp_path / "mine" / "test" / "1.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    root = tmp_path / "root"
    args = ["--datasets", f"wds:{tmp_path / 'mine'}", "--splits", "test", "--root", str(root), "--image-only"]
    assert guarded(main, args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {shard}: the shard is cut short (it ends inside")
    assert not (root / "manifest").exists()
