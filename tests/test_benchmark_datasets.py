"""The ten registered benchmarks, each loaded offline through the registry from a small copy in both
layouts a user may hold (Hugging Face Parquet, ImageFolder): class counts, evaluation splits,
decoding, and labels that land on the right class names whatever the copy calls its classes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sources import benchmarks
from sources.benchmarks import BENCHMARKS_BY_NAME, _classnames, align, name_key
from sources.images import decode_manifest
from sources.registry import BENCHMARKS, list_benchmarks, open_dataset

# The canonical class counts and evaluation splits (docs/datasets.md says why each).
CANONICAL = {
    "imagenet1k": (1000, "val"),
    "places365": (365, "val"),
    "sun397": (397, "test"),
    "food101": (101, "test"),
    "pets": (37, "test"),
    "dtd": (47, "test"),
    "cifar10": (10, "test"),
    "cifar100": (100, "test"),
    "cars": (196, "test"),
    "caltech101": (102, "test"),  # 101 object classes + background, as CLIP and VTAB
}
FIRST_NAMES = {  # spot checks of the curated lists
    "imagenet1k": "tench",
    "places365": "airfield",
    "sun397": "abbey",
    "food101": "apple pie",
    "pets": "Abyssinian",
    "dtd": "banded",
    "cifar10": "airplane",
    "cifar100": "apple",
    "cars": "AM General Hummer SUV 2000",
    "caltech101": "accordion",
}
# Caltech-101's own folder names are mixed case, so they sort in another order than its class list.
CALTECH_FOLDERS = {
    "background_google": "BACKGROUND_Google",
    "faces": "Faces",
    "faces_easy": "Faces_easy",
    "leopards": "Leopards",
    "motorbikes": "Motorbikes",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No shared copy, no data dir, no overrides unless a test sets them."""
    monkeypatch.setenv("WDYS_SHARED_DATASETS", str(tmp_path / "no-shared-copy"))
    monkeypatch.delenv("WDYS_DATA_DIR", raising=False)
    for bench in BENCHMARKS_BY_NAME.values():
        monkeypatch.delenv(f"{bench.env_prefix}_DIR", raising=False)
        monkeypatch.delenv(f"{bench.env_prefix}_HUB", raising=False)


def jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (37 * index % 256, 90, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def own_names(name: str) -> list[str]:
    """What the dataset itself calls its classes, in label order (synset ids, `apple_pie`, ...)."""
    entry = _classnames()[name]
    return list(entry.get("raw", entry["names"]))


def folder_names(name: str) -> list[str]:
    names = [n.replace("/", "_") for n in own_names(name)]  # SUN397's `apse/indoor`, a Cars `C/V`
    return [CALTECH_FOLDERS.get(n, n) for n in names] if name == "caltech101" else names


def picked(n: int) -> list[int]:
    """Canonical classes that get images: both ends and the middle."""
    return [0, n // 2, n - 1, n // 2]


def write_parquet_copy(root: Path, name: str, split: str) -> list[int]:
    n = CANONICAL[name][0]
    labels = picked(n)
    images = pa.array([{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in range(len(labels))])
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
    features = {"info": {"features": {"label": {"names": own_names(name), "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({"huggingface": json.dumps(features)})
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return labels


def write_imagefolder_copy(root: Path, name: str, split: str) -> dict[str, int]:
    """Every class folder, images in a few; returns file name -> canonical class."""
    folders = folder_names(name)
    for folder in folders:
        (root / split / folder).mkdir(parents=True)
    (root / split / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    expected = {}
    for i, cls in enumerate(picked(len(folders))):
        (root / split / folders[cls] / f"img{i}.jpg").write_bytes(jpeg(i))
        expected[f"img{i}.jpg"] = cls
    return expected


def check(source, name: str, expected_names: list[str]) -> None:
    count, split = CANONICAL[name]
    assert source.name == name and source.split == split
    assert len(source.class_names) == count
    assert source.class_names == tuple(_classnames()[name]["names"])
    assert source.class_names[0] == FIRST_NAMES[name]
    manifest = source.manifest(list(range(source.num_rows)))
    images, errors = decode_manifest(manifest)
    assert errors == [None] * source.num_rows and images[0].size == (6, 4)
    got = [source.class_names[label] for label in manifest.column("label").to_pylist()]
    assert got == expected_names
    assert all(i.startswith(f"{split}/") for i in manifest.column("image_id").to_pylist())


@pytest.mark.parametrize("name", list(CANONICAL))
def test_hf_parquet_copy_in_the_data_dir(name, tmp_path, monkeypatch):
    bench = BENCHMARKS_BY_NAME[name]
    # the copy names the split as its hub export does (ImageNet's and Food-101's `validation`)
    labels = write_parquet_copy(tmp_path / name, name, bench.hub_split)
    monkeypatch.setenv("WDYS_DATA_DIR", str(tmp_path))
    source = open_dataset(name, CANONICAL[name][1])
    canonical = _classnames()[name]["names"]
    check(source, name, [canonical[label] for label in labels])


@pytest.mark.parametrize("name", list(CANONICAL))
def test_imagefolder_copy_named_by_its_env_var(name, tmp_path, monkeypatch):
    bench = BENCHMARKS_BY_NAME[name]
    split = CANONICAL[name][1]
    expected = write_imagefolder_copy(tmp_path / "copy", name, split)
    monkeypatch.setenv(f"{bench.env_prefix}_DIR", str(tmp_path / "copy"))
    source = open_dataset(name, split)
    canonical = _classnames()[name]["names"]
    uris = source.manifest(list(range(source.num_rows))).column("uri").to_pylist()
    check(source, name, [canonical[expected[Path(uri).name]] for uri in uris])


def test_every_benchmark_is_registered_and_listed():
    assert set(CANONICAL) <= set(BENCHMARKS)
    assert [tuple(b) for b in list_benchmarks()][: len(CANONICAL)] == [
        (name, split, count) for name, (count, split) in CANONICAL.items()
    ]


def test_test_means_the_evaluation_split_where_test_labels_are_not_public(tmp_path, monkeypatch):
    write_imagefolder_copy(tmp_path / "imagenet1k", "imagenet1k", "validation")
    monkeypatch.setenv("WDYS_DATA_DIR", str(tmp_path))
    source = open_dataset("imagenet1k", "test")  # as in CLIP_benchmark
    assert source.split == "test" and source.num_rows == 4 and len(source.class_names) == 1000


def test_mixed_case_folders_are_mapped_by_name(tmp_path, monkeypatch):
    """Oxford pets: cats are `Abyssinian`, dogs `american_bulldog`; sorted, the cats come first."""
    write_imagefolder_copy(tmp_path / "pets", "pets", "test")
    monkeypatch.setenv("WDYS_DATA_DIR", str(tmp_path))
    source = open_dataset("pets", "test")
    rows = source.manifest(list(range(source.num_rows))).to_pydict()
    by_file = {
        Path(u).name: source.class_names[lab] for u, lab in zip(rows["uri"], rows["label"], strict=True)
    }
    assert by_file["img0.jpg"] == "Abyssinian" and by_file["img2.jpg"] == "Yorkshire Terrier"
    assert by_file["img1.jpg"] == "Keeshond"


def test_parquet_whose_classes_are_in_another_order_is_relabelled(tmp_path, monkeypatch):
    names = list(reversed(own_names("food101")))
    images = pa.array([{"bytes": jpeg(0), "path": "0.jpg"}])
    table = pa.table({"image": images, "label": pa.array([0], pa.int64())})  # 0 = "waffles" here
    features = {"info": {"features": {"label": {"names": names, "_type": "ClassLabel"}}}}
    pq.write_table(
        table.replace_schema_metadata({"huggingface": json.dumps(features)}), tmp_path / "test.parquet"
    )
    monkeypatch.setenv("WDYS_FOOD101_DIR", str(tmp_path))
    source = open_dataset("food101", "test")
    assert source.class_names[source.manifest([0]).column("label")[0].as_py()] == "waffles"


def test_hub_export_through_fsspec_without_class_names(monkeypatch):
    """A WebDataset export (Caltech-101's): `webp` and `cls` columns, no label metadata; the
    benchmark's own list names the classes. memory:// stands in for hf://."""
    fs = fsspec.filesystem("memory")
    images = pa.array([{"bytes": jpeg(i), "path": None} for i in range(3)])
    table = pa.table({"__key__": ["a", "b", "c"], "webp": images, "cls": pa.array([4, 0, 101], pa.int64())})
    with fs.open("/caltech/default/test/0000.parquet", "wb") as f:
        pq.write_table(table, f)
    monkeypatch.setenv("WDYS_CALTECH101_HUB", "memory://caltech/default")
    source = open_dataset("caltech101", "test")
    labels = source.manifest([0, 1, 2]).column("label").to_pylist()
    assert [source.class_names[i] for i in labels] == ["background", "accordion", "yin and yang symbol"]
    assert decode_manifest(source.manifest([2]))[1] == [None]


def test_a_copy_missing_classes_is_a_clear_error(tmp_path, monkeypatch):
    """Caltech-101 without its background class has 101 folders; the benchmark uses 102."""
    for folder in folder_names("caltech101"):
        if folder != "BACKGROUND_Google":
            (tmp_path / "test" / folder).mkdir(parents=True)
    monkeypatch.setenv("WDYS_CALTECH101_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="has 101 classes, but Caltech-101 .* has 102"):
        open_dataset("caltech101", "test")


def test_missing_copies_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("WDYS_PLACES365_HUB", f"wds:{tmp_path / 'no-such-source'}")
    with pytest.raises(FileNotFoundError, match="WDYS_DATA_DIR/places365"):
        open_dataset("places365", "val")  # no copy, and its source cannot be read
    monkeypatch.setattr(benchmarks, "EMBEDDED_DATASETS", tmp_path / "no-embedded-copy")
    with pytest.raises(FileNotFoundError, match="only in a local copy"):
        open_dataset("cifar10", "dev")
    monkeypatch.setenv("WDYS_DTD_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="WDYS_DTD_DIR=.* has no split 'test'"):
        open_dataset("dtd", "test")


def test_names_in_another_order_with_unknown_ones_cannot_be_mapped():
    bench = BENCHMARKS_BY_NAME["cifar10"]
    names = ["truck", "ship", "horse", "frog", "dog", "deer", "cat", "bird", "car", "plane"]
    with pytest.raises(ValueError, match="not in its order"):
        align(bench, names, "copy")
    assert align(bench, [f"class {i}" for i in range(10)], "copy") is None  # unknown: by position
    assert align(bench, names[:8][::-1] + ["automobile", "airplane"], "copy") == list(range(2, 10)) + [1, 0]


def test_name_keys():
    assert name_key("/a/apartment_building/outdoor") == name_key("apartment building outdoor")
    assert name_key("American_Pit-Bull Terrier") == "american pit bull terrier"
