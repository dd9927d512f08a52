"""The layouts a dataset's images can be stored in, one table: `<layout>:<location>` names a user's
own dataset in one of them, and a registered benchmark's local copy is found by asking each, in the
table's order, whether it holds the split. Adding a format is one row here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import fsspec

from sources.base import DatasetSource
from sources.imagefolder import open_imagefolder
from sources.parquet import open_parquet, split_files
from sources.wds import is_wds, open_wds
from storage.paths import DATASET_LAYOUTS

Opener = Callable[[str, str, str, Sequence[str] | None], DatasetSource]  # name, location, split, class names


@dataclass(frozen=True)
class Layout:
    open: Opener  # `class_names`: the benchmark's, used where the copy names no classes itself
    holds: Callable[[str, str], bool]  # (location, split): whether the location holds the split so
    location: str  # what the location is, for messages


def _holds_parquet(location: str, split: str) -> bool:
    try:
        split_files(location, split)
    except FileNotFoundError:
        return False
    return True


def _holds_imagefolder(location: str, split: str) -> bool:
    fs, root = fsspec.core.url_to_fs(location)
    return not root.endswith(".parquet") and fs.isdir(f"{root.rstrip('/')}/{split}")


def _open_imagefolder(
    name: str, location: str, split: str, class_names: Sequence[str] | None = None
) -> DatasetSource:
    """An ImageFolder's classes are its folders, whatever list a benchmark has."""
    return open_imagefolder(name, location, split)


LAYOUTS: dict[str, Layout] = {
    "parquet": Layout(open_parquet, _holds_parquet, "<file, folder or URL>"),
    "wds": Layout(open_wds, is_wds, "<folder or URL>"),
    "imagefolder": Layout(_open_imagefolder, _holds_imagefolder, "<folder or URL>"),
}
assert set(LAYOUTS) == set(DATASET_LAYOUTS), "storage.paths parses `<layout>:` with these names"


def layout_specs() -> str:
    """`'parquet:<file, folder or URL>' / ...`, for a message that lists what a user can name."""
    return " / ".join(f"'{name}:{layout.location}'" for name, layout in LAYOUTS.items())


def layout_of(location: str, splits: Sequence[str]) -> tuple[str, str] | None:
    """(layout, split name) of the first of `splits` that the copy at `location` holds, trying the
    layouts in the table's order; None when it holds none of them."""
    for split in splits:
        for name, layout in LAYOUTS.items():
            if layout.holds(location, split):
                return name, split
    return None
