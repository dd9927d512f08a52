"""The dataset registry's readers on real files: Hugging Face Parquet (local and through an fsspec
URL), ImageFolder in both layouts, readable names, and the CIFAR-10 sample that ships with the code."""

from __future__ import annotations

import io
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.errors import BadDataset, BadParameter, DatasetNotFound, UserError
from sources.benchmarks import EMBEDDED_DATASETS
from sources.images import decode_manifest
from sources.registry import open_dataset
from storage.paths import dataset_name, partition_value
from tasks.plan import select_rows


def jpeg(color: tuple[int, int, int], size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def hf_table(names: list[str], labels: list[int]) -> pa.Table:
    images = pa.array([{"bytes": jpeg((40 * i, 0, 0)), "path": f"{i}.jpg"} for i in range(len(labels))])
    table = pa.table({"img": images, "label": pa.array(labels, pa.int64())})
    features = {"info": {"features": {"label": {"names": names, "_type": "ClassLabel"}}}}
    return table.replace_schema_metadata({"huggingface": json.dumps(features)})


def test_hf_parquet_folder_with_label_metadata(tmp_path):
    pq.write_table(hf_table(["cat", "dog", "eel"], [2, 0, 1, 1]), tmp_path / "test-00000-of-00001.parquet")
    source = open_dataset(f"parquet:{tmp_path}", "test")
    assert source.class_names == ("cat", "dog", "eel") and source.num_rows == 4
    manifest = source.manifest([3, 1])
    assert manifest.column("label").to_pylist() == [1, 0]
    assert manifest.column("image_id").to_pylist() == ["test/0000003", "test/0000001"]
    images, errors = decode_manifest(manifest)
    assert errors == [None, None] and images[0].size == (8, 6)


def test_parquet_through_an_fsspec_url_reads_like_a_local_file():
    """The same reader serves hf://datasets/<id>; memory:// stands in for the hub here."""
    fs = fsspec.filesystem("memory")
    with fs.open("/ds/plain_text/train-00000-of-00001.parquet", "wb") as f:
        pq.write_table(hf_table(["a", "b"], [1, 0, 1]), f)
    source = open_dataset("parquet:memory://ds", "train")
    assert source.class_names == ("a", "b")
    assert source.manifest([0, 2]).column("label").to_pylist() == [1, 1]


def test_parquet_without_class_names_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "test.parquet")
    with pytest.raises(ValueError, match="no class names"):
        open_dataset(f"parquet:{tmp_path}", "test")
    with pytest.raises(FileNotFoundError, match="split 'dev'"):
        open_dataset(f"parquet:{tmp_path}", "dev")


def test_imagefolder_keeps_uris_and_sorted_class_folders(tmp_path):
    for cls, color in (("zebra", (0, 0, 0)), ("ant", (255, 255, 255))):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "val" / cls / f"{i}.jpg").write_bytes(jpeg(color))
    (tmp_path / "val" / "ant" / "notes.txt").write_text("not an image")
    source = open_dataset(f"imagefolder:{tmp_path}", "val")
    assert source.class_names == ("ant", "zebra") and source.num_rows == 4
    manifest = source.manifest([0, 3])
    assert manifest.column("label").to_pylist() == [0, 1]
    assert manifest.column("uri").to_pylist()[1].endswith("val/zebra/1.jpg")
    images, errors = decode_manifest(manifest)
    assert errors == [None, None] and images[1].getpixel((0, 0))[0] < 30


def test_cifar10_dev_ships_with_the_code(tmp_path, monkeypatch):
    """With the shared-copy lookup pointed at an empty folder, the default data still resolves."""
    monkeypatch.setenv("WDYS_SHARED_DATASETS", str(tmp_path))
    monkeypatch.delenv("WDYS_DATA_DIR", raising=False)
    monkeypatch.delenv("WDYS_CIFAR10_DIR", raising=False)
    source = open_dataset("cifar10", "dev")
    assert str(EMBEDDED_DATASETS / "cifar10") in source.note
    assert source.num_rows == 1000 and len(source.class_names) == 10 and source.class_names[0] == "airplane"
    images, errors = decode_manifest(source.manifest([0, 999]))
    assert errors == [None, None] and images[0].size == (32, 32)
    assert json.loads((EMBEDDED_DATASETS / "cifar10" / "classes.json").read_text()) == list(
        source.class_names
    )


def photo_folder(root, classes=("ant", "zebra"), per_class=2):
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i}.jpg").write_bytes(jpeg((30 * i, 0, 0)))
    return root


def test_imagefolder_in_torchvision_layout_is_the_split_asked_for(tmp_path):
    photo_folder(tmp_path / "photos")
    (tmp_path / "photos" / ".ipynb_checkpoints").mkdir()
    source = open_dataset(f"imagefolder:{tmp_path}/photos", "dev")
    assert source.class_names == ("ant", "zebra") and source.num_rows == 4
    assert "class folders directly under it" in source.note
    manifest = source.manifest([2])
    assert manifest.column("uri").to_pylist() == [f"{tmp_path}/photos/zebra/0.jpg"]
    assert manifest.column("image_id").to_pylist() == ["dev/0000002"]


def test_imagefolder_mistakes_name_the_folder(tmp_path):
    with pytest.raises(DatasetNotFound, match="/nonexistent/photos: no such folder"):
        open_dataset("imagefolder:/nonexistent/photos", "test")
    photo_folder(tmp_path / "train")  # split folders, but not the one asked for
    with pytest.raises(DatasetNotFound, match=r"no split folder 'test'.*\['train'\] look like splits"):
        open_dataset(f"imagefolder:{tmp_path}", "test")
    assert isinstance(DatasetNotFound("x"), UserError)


def test_user_datasets_get_readable_names(tmp_path):
    a, b = f"imagefolder:{tmp_path}/a/photos", f"imagefolder:{tmp_path}/b/photos/"
    assert dataset_name(a).startswith("photos-") and dataset_name(a) != dataset_name(b)
    assert dataset_name(b) == dataset_name(b.rstrip("/"))
    assert partition_value(f"{a}?name=my pets") == "my_pets" and dataset_name("cifar10") == "cifar10"
    assert dataset_name("parquet:hf://datasets/org/flowers").startswith("flowers-")
    photo_folder(tmp_path / "a" / "photos")
    assert open_dataset(f"{a}?name=mine", "test").num_rows == 4
    with pytest.raises(BadParameter, match="registered benchmark"):
        open_dataset(f"{a}?name=cifar10", "test")


def test_parquet_columns_are_detected_and_named(tmp_path):
    images = pa.array([jpeg((0, 0, 0)), jpeg((255, 0, 0))], pa.binary())
    table = pa.table({"id": ["x", "y"], "picture": images, "target": pa.array([1, 0], pa.int32())})
    pq.write_table(table, tmp_path / "test.parquet")
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog"]))
    source = open_dataset(f"parquet:{tmp_path}", "test")
    assert "images from column 'picture', labels from 'target'" in source.note
    assert source.manifest([0, 1]).column("label").to_pylist() == [1, 0]
    two = table.append_column("thumbnail", images)
    pq.write_table(two, tmp_path / "test.parquet")
    with pytest.raises(BadDataset, match=r"several fit: \['picture', 'thumbnail'\]"):
        open_dataset(f"parquet:{tmp_path}", "test")
    with pytest.raises(DatasetNotFound, match="no such file"):
        open_dataset(f"parquet:{tmp_path}/missing.parquet", "test")


def test_unknown_dataset_lists_what_exists():
    with pytest.raises(ValueError, match="cifar10"):
        open_dataset("cifar11", "test")


def test_row_selection_is_seeded_and_ordered():
    assert select_rows(10, None, None) == list(range(10))
    assert select_rows(10, 3, None) == [0, 1, 2]
    sample = select_rows(1000, 20, 7)
    assert sample == sorted(sample) and len(set(sample)) == 20 and sample == select_rows(1000, 20, 7)
    assert sample != select_rows(1000, 20, 8)
