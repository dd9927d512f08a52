"""Dataset name -> source, in the manner of CLIP_benchmark's builder registry.

Names: a registered benchmark (`imagenet1k`, `places365`, `sun397`, `food101`, `pets`, `dtd`,
`cifar10`, `cifar100`, `cars`, `caltech101`: see `sources.benchmarks` and docs/datasets.md), or
`parquet:<file, folder or URL>`, `imagefolder:<folder or URL>` and `wds:<folder or URL>` (CLIP_benchmark's
WebDataset layout, `sources.wds`) for data the user already holds.
An ImageFolder holds split folders (`<split>/<class>/<image>`) or, as torchvision's, class folders
directly; Parquet's image and label columns are detected. A user's dataset is filed under a readable
name (`storage.paths.dataset_name`), or the one given as `?name=<name>` after the location.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from core.errors import BadParameter
from sources.base import DatasetSource
from sources.benchmarks import BENCHMARK_LIST, open_benchmark, shared_datasets_dir
from sources.layouts import LAYOUTS, layout_specs
from storage.paths import split_dataset_spec

__all__ = [
    "BENCHMARKS",
    "BenchmarkInfo",
    "benchmark",
    "list_benchmarks",
    "open_dataset",
    "shared_datasets_dir",
]

Builder = Callable[[str], DatasetSource]  # split -> source
BENCHMARKS: dict[str, Callable[[str], DatasetSource]] = {}


def benchmark(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        BENCHMARKS[name] = builder
        return builder

    return register


for _bench in BENCHMARK_LIST:
    benchmark(_bench.name)(functools.partial(open_benchmark, _bench))


class BenchmarkInfo(NamedTuple):
    name: str
    split: str  # the evaluation split (`test` names it too)
    num_classes: int


def list_benchmarks() -> list[BenchmarkInfo]:
    """The registered benchmarks with their evaluation split and class count, in the order of the
    docs' table (e.g. for a `benchmarks` view)."""
    return [BenchmarkInfo(b.name, b.split, b.num_classes) for b in BENCHMARK_LIST if b.name in BENCHMARKS]


def open_dataset(name: str, split: str) -> DatasetSource:
    """`name`: a registered benchmark, or `<layout>:<location>[?name=<readable name>]`."""
    layout, location, given = split_dataset_spec(name)
    if layout is not None:
        if given in BENCHMARKS:
            raise BadParameter(f"dataset {name!r}: name={given} is a registered benchmark's; choose another")
        return LAYOUTS[layout].open(name, location, split, None)
    if name in BENCHMARKS:
        return BENCHMARKS[name](split)
    raise BadParameter(
        f"unknown dataset {name!r}; known: {sorted(BENCHMARKS)}, or {layout_specs()}"
        " for your own data (optionally '?name=<name>' after it)"
    )
