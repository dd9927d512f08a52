"""Bad images for real: each is either decoded faithfully or becomes an error row (image id, stage,
error) in DuckDB, while the rest of its shard is processed and the metrics count the exclusions."""

from __future__ import annotations

import io
import struct
import zlib

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from flows.benchmark import benchmark
from sources.images import decode, decode_manifest
from storage.keys import Selection
from tasks.ingest import ingest_shard
from tasks.plan import plan_dataset


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels: a decompression bomb for Pillow."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


GOOD = encoded(Image.new("RGB", (32, 32), (200, 30, 30)), "JPEG")
BAD = {
    "truncated.jpg": GOOD[: len(GOOD) // 2],
    "zero.jpg": b"",
    "text.jpg": b"this is not an image",
    "bomb.png": png_claiming(40_000, 40_000),
}
ODD = {
    "cmyk.jpg": encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
    "sixteen.png": encoded(Image.fromarray(np.full((16, 16), 40_000, np.uint16)), "PNG"),
    "palette.png": encoded(Image.new("P", (16, 16), 0), "PNG", transparency=0),
}


def test_odd_but_valid_images_decode_faithfully():
    r, g, b = decode(ODD["cmyk.jpg"], None).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red
    assert decode(ODD["sixteen.png"], None).getpixel((8, 8)) == (156, 156, 156)  # 40000 / 256, not clipped
    assert decode(ODD["palette.png"], None).getpixel((8, 8)) == (255, 255, 255)  # transparent -> white


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.jpg", "runcated"),
        ("zero.jpg", "empty image"),
        ("text.jpg", "UnidentifiedImageError"),
        ("bomb.png", "DecompressionBomb"),
    ],
)
def test_bad_image_becomes_an_error(name, reason):
    images, errors = decode_manifest(
        pa.table({"image": pa.array([BAD[name], GOOD], pa.binary()), "uri": pa.nulls(2, pa.string())})
    )
    assert images[0] is None and errors[0].startswith("decode: ") and reason in errors[0]
    assert images[1] is not None and errors[1] is None  # the rest of the shard is untouched


def test_missing_file_behind_a_uri_is_an_error(tmp_path):
    images, errors = decode_manifest(
        pa.table({"image": pa.nulls(1, pa.binary()), "uri": [str(tmp_path / "gone.jpg")]})
    )
    assert images == [None] and "FileNotFoundError" in errors[0]


def test_bad_images_are_recorded_and_excluded_end_to_end(prefect_server, tmp_path):
    data = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (data / "test" / cls).mkdir(parents=True)
        for i in range(3):
            (data / "test" / cls / f"good{i}.jpg").write_bytes(GOOD)
    for name, blob in {**BAD, **ODD}.items():
        (data / "test" / "cat" / name).write_bytes(blob)
    (data / "test" / "dog" / "moved.jpg").write_bytes(GOOD)
    dataset, root = f"imagefolder:{data}", tmp_path / "root"
    plan = plan_dataset.fn(Selection(dataset, "test", shard_size=64))
    ingest_shard.fn(str(root), plan.shard(0))  # the manifest records moved.jpg's URI...
    (data / "test" / "dog" / "moved.jpg").unlink()  # ...then the file goes away
    result = benchmark(
        datasets=[dataset],
        splits=["test"],
        shard_size=64,
        root=str(root),
        class_samples=1,
        class_weights=["name"],
    )
    total, bad = 6 + len(BAD) + len(ODD) + 1, len(BAD) + 1
    for row in result["metrics"]:
        assert (row["n"], row["excluded"]) == (total - bad, bad)
    with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
        errors = con.sql("select image_id, stage, error from errors").fetchall()
        reasons = dict(con.sql("select reason, images from exclusions where components = 'image'").fetchall())
    assert {stage for _, stage, _ in errors} == {"image", "description", "prediction"}
    assert len({image_id for image_id, _, _ in errors}) == bad
    assert sum(reasons.values()) == bad and any("FileNotFoundError" in r for r in reasons)
