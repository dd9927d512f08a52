"""ImageFolder layouts: `<root>/<split>/<class name>/<image>`, or torchvision's `<root>/<class name>/<image>`
(no split folders: the whole folder is the split asked for). Classes are the sorted folder names.

The manifest keeps each image's URI rather than its bytes: the file stays where the user has it.
"""

from __future__ import annotations

from collections.abc import Sequence

import fsspec
import pyarrow as pa

from core.errors import BadDataset, DatasetNotFound
from sources.base import DatasetSource, file_rows

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _subfolders(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """The sorted names of `folder`'s visible subfolders (`.ipynb_checkpoints` is not a class)."""
    entries = fs.ls(folder, detail=True)
    names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    return sorted(n for n in names if not n.startswith("."))


def _images_by_folder(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, list[str]]:
    """Image files per first-level subfolder of `folder`, at any depth below it, in one walk."""
    found: dict[str, list[str]] = {}
    for path in sorted(fs.find(folder)):
        first, sep, _ = path[len(folder) + 1 :].partition("/")
        if sep and path.lower().endswith(IMAGE_SUFFIXES):
            found.setdefault(first, []).append(path)
    return found


def class_folder(fs: fsspec.AbstractFileSystem, location: str, split: str) -> str:
    """The folder whose subfolders are the classes of `split`: `<root>/<split>` when it exists, else
    the root itself when it holds class folders of images (torchvision's layout)."""
    root = fsspec.core.url_to_fs(location)[1].rstrip("/")
    if not fs.isdir(root):
        raise DatasetNotFound(f"imagefolder {location}: no such folder")
    if fs.isdir(f"{root}/{split}"):
        return f"{root}/{split}"
    folders = _subfolders(fs, root)
    images = (p for f in folders for p in fs.ls(f"{root}/{f}", detail=False))
    if any(p.lower().endswith(IMAGE_SUFFIXES) for p in images):  # stops at the first image
        return root
    hint = f"; its folders {folders[:8]} look like splits: pass one with --splits" if folders else ""
    raise DatasetNotFound(
        f"imagefolder {location}: no split folder {split!r} and no class folders of images"
        f" (expected <folder>/<class>/<image> or <folder>/<split>/<class>/<image>){hint}"
    )


def open_imagefolder(name: str, location: str, split: str) -> DatasetSource:
    """Every class folder is a class, an empty one too (a class list is the folders, not the images
    found); hidden folders (`.ipynb_checkpoints`) are not classes."""
    fs = fsspec.core.url_to_fs(location)[0]
    folder = class_folder(fs, location, split)
    classes = _subfolders(fs, folder)
    if not classes:
        raise BadDataset(f"imagefolder {location}: {folder} has no class folders")
    by_class = _images_by_folder(fs, folder)
    items = [(path, i) for i, cls in enumerate(classes) for path in by_class.get(cls, [])]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    layout = "split folders" if folder.endswith(f"/{split}") else "class folders directly under it"
    note = f"imagefolder {location}: {len(items)} images in {len(classes)} classes ({layout})"

    def read_rows(rows: Sequence[int]) -> pa.Table:
        return file_rows(split, rows, items, prefix)

    return DatasetSource(name, split, tuple(classes), len(items), read_rows, note)
