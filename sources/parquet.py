"""Hugging Face layout Parquet: an image struct column (`bytes`, `path`) and an integer label.

Works on local files and folders and on any fsspec URL, `hf://datasets/<id>` included, so users
who are online read the hub's Parquet exports with the same code.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from core.errors import BadDataset, DatasetNotFound
from sources import remote
from sources.base import DatasetSource, image_ids

IMAGE_COLUMNS = ("img", "image", "jpg", "jpeg", "png", "webp")  # the last four: WebDataset exports
LABEL_COLUMNS = ("label", "fine_label", "labels", "cls")


def split_files(location: str, split: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The Parquet files of one split: `<split>.parquet`, `<split>-*.parquet`, `<split>/*.parquet`,
    or the hub's `<config>/<split>-*.parquet`, `data/<split>-*.parquet` and, in its Parquet
    conversions (`refs/convert/parquet`), `<config>/<split>/*.parquet`."""
    fs, root = fsspec.core.url_to_fs(location)
    if root.endswith(".parquet"):
        if not fs.exists(root):
            raise DatasetNotFound(f"parquet {location}: no such file")
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
    if not fs.exists(root):
        raise DatasetNotFound(f"parquet {location}: no such file or folder")
    raise DatasetNotFound(f"no Parquet files for split {split!r} under {location!r}")


def _is_image(field: pa.Field) -> bool:
    """Encoded image bytes: a binary column, or the Hugging Face `Image` struct (`bytes`, `path`)."""
    t = field.type
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)
    )


def _pick(schema: pa.Schema, candidates: Sequence[str], fits, what: str) -> str:
    """The first known column name that fits, else the only column of the schema that fits."""
    for name in candidates:
        if name in schema.names and fits(schema.field(name)):
            return name
    fitting = [f.name for f in schema if fits(f)]
    if len(fitting) == 1:
        return fitting[0]
    raise BadDataset(
        f"no {what} column found among {schema.names} (tried {list(candidates)}"
        f"{', several fit: ' + str(fitting) if fitting else ''}); rename the column"
    )


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
    raise BadDataset(
        f"no class names for {files[0]}: no Hugging Face label metadata and no classes.json beside it"
    )


def _parquet_file(fs: fsspec.AbstractFileSystem, path: str, location: str) -> pq.ParquetFile:
    """One file with its footer read: a local file directly, a remote one through the byte cache
    (`sources.remote`: the footer, then only the column chunks read); a file without its footer (a
    copy cut short) is refused naming it."""
    try:
        if isinstance(fs, LocalFileSystem):
            return pq.ParquetFile(path)
        if remote.is_remote(fs):
            cached = remote.CachedFile(fs, path, remote.repo_folder(location))
            return pq.ParquetFile(remote.RangeReader(cached))
        return pq.ParquetFile(fs.open(path, "rb"))
    except pa.ArrowInvalid as exc:
        raise BadDataset(
            f"parquet {path}: not a complete Parquet file ({str(exc).splitlines()[0]}): the copy is "
            "cut short or damaged, fetch it again"
        ) from exc


def _take(files: Sequence[pq.ParquetFile], starts: Sequence[int], rows: Sequence[int], columns: list[str]):
    """`rows` (numbered over all files) as a table in their order, reading only the row groups
    that hold them."""
    pieces, where = [], []  # where[k]: the position in `rows` of the table's row k
    for i, f in enumerate(files):
        mine = [(n, r - starts[i]) for n, r in enumerate(rows) if starts[i] <= r < starts[i + 1]]
        if not mine:
            continue
        sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
        bounds = list(itertools.accumulate(sizes, initial=0))
        group_of = [bisect.bisect_right(bounds, r) - 1 for _, r in mine]
        groups = sorted(set(group_of))
        before = dict(zip(groups, itertools.accumulate((sizes[g] for g in groups), initial=0), strict=False))
        local = [before[g] + r - bounds[g] for (_, r), g in zip(mine, group_of, strict=True)]
        pieces.append(f.read_row_groups(groups, columns=columns).take(pa.array(local, pa.int64())))
        where += [n for n, _ in mine]
    if len(where) != len(rows):
        raise IndexError(f"rows outside the {starts[-1]} rows of the split")
    if not pieces:
        return files[0].schema_arrow.empty_table().select(columns)
    order = sorted(range(len(where)), key=where.__getitem__)
    return pa.concat_tables(pieces).take(pa.array(order, pa.int64()))


def open_parquet(
    name: str, location: str, split: str, class_names: Sequence[str] | None = None
) -> DatasetSource:
    """`class_names` is used only where the files name no classes themselves."""
    fs, paths = split_files(location, split)
    files = [_parquet_file(fs, path, location) for path in paths]
    schema = files[0].schema_arrow
    image_col = _pick(schema, IMAGE_COLUMNS, _is_image, "image")
    label_col = _pick(schema, LABEL_COLUMNS, lambda f: pa.types.is_integer(f.type), "integer label")
    classes = class_names_from(fs, paths, schema, label_col, class_names)
    starts = [0]
    for f in files:
        starts.append(starts[-1] + f.metadata.num_rows)
    count = starts[-1]
    note = (
        f"parquet {location} ({split}): {count} rows in {len(files)} file(s); images from column "
        f"{image_col!r}, labels from {label_col!r}, {len(classes)} classes"
    )

    def read_rows(rows: Sequence[int]) -> pa.Table:
        table = _take(files, starts, rows, [image_col, label_col])
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

    return DatasetSource(name, split, tuple(classes), count, read_rows, note)
