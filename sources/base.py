"""What a dataset source gives the pipeline: class names, a row count, and rows on demand.

Rows are read per shard, never the whole split at once, so memory stays flat however large the
dataset is. A row carries the encoded image bytes, or a URI when the image lives in its own file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from storage.schemas import MANIFEST


@dataclass(frozen=True)
class DatasetSource:
    name: str
    split: str
    class_names: tuple[str, ...]
    num_rows: int
    read_rows: Callable[[Sequence[int]], pa.Table]  # rows -> a table with MANIFEST's columns
    note: str = ""  # how the data was read (layout, columns used): logged when a run plans it
    expected_rows: int | None = None  # a registered benchmark's evaluation split: its known size

    def manifest(self, rows: Sequence[int]) -> pa.Table:
        table = self.read_rows(rows)
        return table.select(MANIFEST.schema().names).cast(MANIFEST.schema())


def image_ids(split: str, rows: Sequence[int]) -> list[str]:
    return [f"{split}/{row:07d}" for row in rows]


def file_rows(
    split: str, rows: Sequence[int], items: Sequence[tuple[str, int]], prefix: str = ""
) -> pa.Table:
    """Manifest rows of images that live in their own files: `items[row]` is (path, label); the
    manifest keeps `prefix + path` as the URI rather than the bytes."""
    return pa.table(
        {
            "image_id": image_ids(split, rows),
            "row": pa.array(rows, pa.int64()),
            "label": pa.array([items[r][1] for r in rows], pa.int64()),
            "image": pa.nulls(len(rows), pa.binary()),
            "uri": [prefix + str(items[r][0]) for r in rows],
        }
    )
