"""Dataset name -> source, in the manner of CLIP_benchmark's builder registry.

Names: a registered benchmark (`cifar10`), or `parquet:<file, folder or URL>` and
`imagefolder:<folder or URL>` for data the user already holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sources.base import DatasetSource
from sources.imagefolder import open_imagefolder
from sources.parquet import open_parquet

Builder = Callable[[str], DatasetSource]  # split -> source
BENCHMARKS: dict[str, Callable[[str], DatasetSource]] = {}
LAYOUTS = {"parquet": open_parquet, "imagefolder": open_imagefolder}


def benchmark(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        BENCHMARKS[name] = builder
        return builder

    return register


def shared_datasets_dir() -> Path:
    """$WDYS_SHARED_DATASETS, else the team's `shared/datasets` beside the checkout."""
    env = os.environ.get("WDYS_SHARED_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


@benchmark("cifar10")
def cifar10(split: str) -> DatasetSource:
    """`test` is the benchmark split; `dev` (100 train images per class) exists only in the local copy."""
    local = shared_datasets_dir() / "cifar10"
    if (local / f"{split}.parquet").exists():
        return open_parquet("cifar10", str(local), split)
    if split == "dev":
        raise FileNotFoundError(f"cifar10 split 'dev' is only in the local copy, not found at {local}")
    return open_parquet("cifar10", "hf://datasets/uoft-cs/cifar10/plain_text", split)


def open_dataset(name: str, split: str) -> DatasetSource:
    layout, sep, location = name.partition(":")
    if sep and layout in LAYOUTS:
        return LAYOUTS[layout](name, location, split)
    if name in BENCHMARKS:
        return BENCHMARKS[name](split)
    raise ValueError(
        f"unknown dataset {name!r}; known: {sorted(BENCHMARKS)} or 'parquet:<path>' / 'imagefolder:<path>'"
    )
