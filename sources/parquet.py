"""Hugging Face layout Parquet: an image struct column (`bytes`, `path`) and an integer label.

Works on local files and folders and on any fsspec URL, `hf://datasets/<id>` included, so users
who are online read the hub's Parquet exports with the same code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads

from sources.base import DatasetSource, image_ids

IMAGE_COLUMNS = ("img", "image", "jpg", "jpeg", "png", "webp")  # the last four: WebDataset exports
LABEL_COLUMNS = ("label", "fine_label", "labels", "cls")


def split_files(location: str, split: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The Parquet files of one split: `<split>.parquet`, `<split>-*.parquet`, `<split>/*.parquet`,
    or the hub's `<config>/<split>-*.parquet`, `data/<split>-*.parquet` and, in its Parquet
    conversions (`refs/convert/parquet`), `<config>/<split>/*.parquet`."""
    fs, root = fsspec.core.url_to_fs(location)
    if root.endswith(".parquet"):
        return fs, [root]
    root = root.rstrip("/")
    patterns = (
        f"{root}/{split}.parquet",
        f"{root}/{split}-*.parquet",
        f"{root}/{split}/*.parquet",
        f"{root}/data/{split}-*.parquet",
        f"{root}/*/{split}-*.parquet",
        f"{root}/*/{split}/*.parquet",
    )
    for pattern in patterns:
        files = sorted(fs.glob(pattern))
        if files:
            return fs, files
    raise FileNotFoundError(f"no Parquet files for split {split!r} under {location!r}")


def _pick(names: Sequence[str], candidates: Sequence[str], what: str) -> str:
    for c in candidates:
        if c in names:
            return c
    raise ValueError(f"no {what} column among {list(names)}; expected one of {list(candidates)}")


def class_names_from(
    fs: fsspec.AbstractFileSystem,
    files: list[str],
    schema: pa.Schema,
    label: str,
    default: Sequence[str] | None = None,
) -> list[str]:
    """Class names from the Hugging Face features metadata, else a `classes.json` beside the files,
    else `default` (a registered benchmark's own class list)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        feature = json.loads(meta).get("info", {}).get("features", {}).get(label, {})
        if feature.get("names"):
            return list(feature["names"])
    folder = files[0].rsplit("/", 1)[0]
    for candidate in (f"{folder}/classes.json", f"{folder.rsplit('/', 1)[0]}/classes.json"):
        if fs.exists(candidate):
            with fs.open(candidate) as f:
                names = json.load(f)
            return [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else list(names)
    if default is not None:
        return list(default)
    raise ValueError(f"no class names for {files[0]}: no Hugging Face label metadata and no classes.json")


def open_parquet(
    name: str, location: str, split: str, class_names: Sequence[str] | None = None
) -> DatasetSource:
    """`class_names` is used only where the files name no classes themselves."""
    fs, files = split_files(location, split)
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    image_col = _pick(dataset.schema.names, IMAGE_COLUMNS, "image")
    label_col = _pick(dataset.schema.names, LABEL_COLUMNS, "label")
    classes = class_names_from(fs, files, dataset.schema, label_col, class_names)

    def read_rows(rows: Sequence[int]) -> pa.Table:
        table = dataset.take(pa.array(rows, pa.int64()), columns=[image_col, label_col])
        images = table.column(image_col).combine_chunks()
        image_bytes = images.field("bytes") if pa.types.is_struct(images.type) else images
        return pa.table(
            {
                "image_id": image_ids(split, rows),
                "row": pa.array(rows, pa.int64()),
                "label": table.column(label_col).cast(pa.int64()),
                "image": image_bytes.cast(pa.binary()),
                "uri": pa.nulls(len(rows), pa.string()),
            }
        )

    return DatasetSource(name, split, tuple(classes), dataset.count_rows(), read_rows)
