"""The dataset registry's readers on real files: Hugging Face Parquet (local and through an fsspec
URL), ImageFolder, and the team's CIFAR-10 copy."""

from __future__ import annotations

import io
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sources.images import decode_manifest
from sources.registry import open_dataset
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


def test_cifar10_dev_from_the_shared_copy():
    source = open_dataset("cifar10", "dev")
    assert source.num_rows == 1000 and len(source.class_names) == 10 and source.class_names[0] == "airplane"
    images, errors = decode_manifest(source.manifest([0, 999]))
    assert errors == [None, None] and images[0].size == (32, 32)


def test_unknown_dataset_lists_what_exists():
    with pytest.raises(ValueError, match="cifar10"):
        open_dataset("cifar11", "test")


def test_row_selection_is_seeded_and_ordered():
    assert select_rows(10, None, None) == list(range(10))
    assert select_rows(10, 3, None) == [0, 1, 2]
    sample = select_rows(1000, 20, 7)
    assert sample == sorted(sample) and len(set(sample)) == 20 and sample == select_rows(1000, 20, 7)
    assert sample != select_rows(1000, 20, 8)
