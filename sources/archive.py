"""A benchmark read from its official archive through torchvision's dataset class, where the hub
has no copy of its evaluation split (Places365: `val_256.tar`, 36,500 images, and the devkit with
the file list and categories from data.csail.mit.edu).

torchvision downloads and unpacks the archives once, verified by its MD5 sums, into
`$WDYS_DATA_DIR/<name>/torchvision` (else `~/.cache/wdys/<name>/torchvision`); later runs read the
unpacked files, counted against the devkit's file list. The manifest keeps each image's file
URI, as for an ImageFolder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from core import settings
from core.errors import BadDataset, BadParameter
from sources.base import DatasetSource, file_rows

# torchvision's split names for the splits the benchmarks evaluate on.
SPLITS = {"Places365": {"val": "val"}}


def archive_root(name: str, data_dir: Path | None = None) -> Path:
    """Where a benchmark's official archives are downloaded and unpacked."""
    data_dir = data_dir or (Path(settings.DATA_DIR.text()) if settings.DATA_DIR.text() else None)
    return (data_dir or Path.home() / ".cache" / "wdys") / name / "torchvision"


def unpacked(root: Path, split: str) -> bool:
    """Whether the split's images are unpacked under `root` (torchvision's `<split>_256` folder)."""
    return (root / f"{SPLITS['Places365'].get(split, split)}_256").is_dir()


def _places365(root: Path, split: str, complete: bool = False):
    from torchvision.datasets import Places365  # torchvision is heavy: import it only when used

    root.mkdir(parents=True, exist_ok=True)
    images = root / f"{split}_256"
    if complete and images.is_dir() and _missing(Places365(str(root), split=split, small=True).imgs):
        # torchvision unpacks only into a missing folder; the archive it verified is kept, so the
        # folder is unpacked again from it, not downloaded again.
        shutil.rmtree(images)
    # download=True refuses an already unpacked image folder: only ask for what is missing.
    return Places365(str(root), split=split, small=True, download=not unpacked(root, split))


def _missing(items: Sequence[tuple[str, int]]) -> list[str]:
    """The listed images that are not on disk."""
    return [file for file, _ in items if not os.path.isfile(file)]


def open_archive(
    name: str, dataset: str, split: str, data_dir: Path | None = None, complete: bool = False
) -> DatasetSource:
    """`dataset`: the torchvision class (`Places365`); `split`: the benchmark's split name. The
    images on disk are counted against the file list: a partial unpacking is refused (`complete`,
    as `wdys datasets --fetch` asks, unpacks it again)."""
    if dataset not in SPLITS or split not in SPLITS[dataset]:
        raise BadParameter(f"{dataset} split {split!r} has no official archive source (known: {SPLITS})")
    root = archive_root(name, data_dir)
    data = _places365(root, SPLITS[dataset][split], complete)
    items: Sequence[tuple[str, int]] = data.imgs
    missing = _missing(items)
    if missing:
        raise BadDataset(
            f"{name}: {data.images_dir} holds {len(items) - len(missing):,} of the {len(items):,} images "
            f"its file list names (unpacking cut short? {Path(missing[0]).name} is missing); "
            f"`wdys datasets --fetch {name}` completes it"
        )
    note = f"torchvision {dataset} ({split}) at {root}: {len(items)} images, {len(data.classes)} classes"

    def read_rows(rows: Sequence[int]) -> pa.Table:
        return file_rows(split, rows, items)

    return DatasetSource(name, split, tuple(data.classes), len(items), read_rows, note)
