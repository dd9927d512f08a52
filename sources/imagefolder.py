"""ImageFolder layout: `<root>/<split>/<class name>/<image>`; classes are the sorted folder names.

The manifest keeps each image's URI rather than its bytes: the file stays where the user has it.
"""

from __future__ import annotations

from collections.abc import Sequence

import fsspec
import pyarrow as pa

from sources.base import DatasetSource, image_ids

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def open_imagefolder(name: str, location: str, split: str) -> DatasetSource:
    """Every class folder is a class, an empty one too (a class list is the folders, not the images
    found); hidden folders (`.ipynb_checkpoints`) are not classes."""
    fs, root = fsspec.core.url_to_fs(location)
    split_dir = f"{root.rstrip('/')}/{split}"
    if not fs.isdir(split_dir):
        raise FileNotFoundError(f"no split folder {split!r} under {location!r}")
    entries = fs.ls(split_dir, detail=True)
    classes = sorted(
        e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"
    )
    classes = [c for c in classes if not c.startswith(".")]
    if not classes:
        raise ValueError(f"{split_dir} has no class folders")
    index = {cls: i for i, cls in enumerate(classes)}
    items: list[tuple[str, int]] = []
    for path in sorted(fs.find(split_dir)):  # one walk of the split, however many classes
        cls, sep, _ = path[len(split_dir) + 1 :].partition("/")
        if sep and cls in index and path.lower().endswith(IMAGE_SUFFIXES):
            items.append((path, index[cls]))
    items.sort(key=lambda item: item[1])  # class by class, each class's files sorted
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"

    def read_rows(rows: Sequence[int]) -> pa.Table:
        return pa.table(
            {
                "image_id": image_ids(split, rows),
                "row": pa.array(rows, pa.int64()),
                "label": pa.array([items[r][1] for r in rows], pa.int64()),
                "image": pa.nulls(len(rows), pa.binary()),
                "uri": [prefix + items[r][0] for r in rows],
            }
        )

    return DatasetSource(name, split, tuple(classes), len(items), read_rows)
