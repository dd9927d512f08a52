"""The zero-shot benchmarks: each with its evaluation split, its class list and where its data lives.

A benchmark's class names are fixed here (`classnames.json`, see docs/datasets.md for where each
list comes from), whatever the data calls its classes. The data is read from the first of:

1. `$WDYS_<NAME>_DIR` (e.g. `WDYS_IMAGENET1K_DIR`), a copy the user already holds;
2. `$WDYS_DATA_DIR/<name>/`;
3. the team's shared copy, `shared/datasets/<name>/` (see `shared_datasets_dir`);
4. the copy shipped with the package, `sources/embedded/<name>/` (CIFAR-10's `dev` sample only);
5. the benchmark's Parquet export on the Hugging Face hub, through fsspec (`$WDYS_<NAME>_HUB`
   replaces the built-in location).

A local copy is either Hugging Face Parquet (`<split>-*.parquet`, `data/<split>-*.parquet`, ...,
read by `sources.parquet`) or an ImageFolder (`<split>/<class folder>/<image>`). Its classes are
matched to the benchmark's by name where every name is recognised (folder names such as ImageNet
synset ids, Food-101's `apple_pie` or the mixed-case Oxford pet breeds); otherwise the data's label
order (sorted folder names, for an ImageFolder) is taken to be the canonical order. A class count
that differs from the benchmark's is an error.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from core import settings
from core.errors import BadDataset, DatasetNotFound
from sources.base import DatasetSource, image_ids
from sources.imagefolder import open_imagefolder
from sources.parquet import open_parquet

CLASSNAMES_FILE = Path(__file__).with_name("classnames.json")
# Copies shipped inside the package (CIFAR-10 `dev`, 1,000 images): the default run needs no download.
EMBEDDED_DATASETS = Path(__file__).with_name("embedded")


@dataclass(frozen=True)
class Benchmark:
    name: str  # the registry name (CLIP_benchmark's)
    title: str
    split: str  # the evaluation split
    hub: str | None  # fsspec location of a public Parquet export of the dataset, if one is known
    hub_split: str  # the evaluation split's name in that export
    split_aliases: tuple[str, ...] = ()  # other names the evaluation split has in local copies
    local_only_splits: tuple[str, ...] = ()  # splits that exist only in a local copy

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(_classnames()[self.name]["names"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def env_prefix(self) -> str:
        return "WDYS_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    def evaluation_split_names(self, split: str) -> tuple[str, ...] | None:
        """The names to look for when `split` is the evaluation split, else None. `test` always
        means the evaluation split, as in CLIP_benchmark (ImageNet's `test` is its val set)."""
        if split in (self.split, "test", self.hub_split, *self.split_aliases):
            return tuple(dict.fromkeys((self.split, self.hub_split, *self.split_aliases)))
        return None


BENCHMARK_LIST: tuple[Benchmark, ...] = (
    Benchmark("imagenet1k", "ImageNet-1k", "val", "hf://datasets/ILSVRC/imagenet-1k", "validation"),
    Benchmark("places365", "Places365", "val", None, "validation"),
    Benchmark("sun397", "SUN397", "test", "hf://datasets/tanganke/sun397", "test"),
    Benchmark("food101", "Food-101", "test", "hf://datasets/ethz/food101", "validation"),
    Benchmark("pets", "Oxford-IIIT Pets", "test", "hf://datasets/timm/oxford-iiit-pet", "test"),
    Benchmark("dtd", "DTD", "test", "hf://datasets/tanganke/dtd", "test"),
    Benchmark(
        "cifar10",
        "CIFAR-10",
        "test",
        "hf://datasets/uoft-cs/cifar10/plain_text",
        "test",
        local_only_splits=("dev",),
    ),
    Benchmark("cifar100", "CIFAR-100", "test", "hf://datasets/uoft-cs/cifar100/cifar100", "test"),
    Benchmark("cars", "Stanford Cars", "test", "hf://datasets/tanganke/stanford_cars", "test"),
    Benchmark(
        "caltech101",
        "Caltech-101",
        "test",
        "hf://datasets/clip-benchmark/wds_vtab-caltech101@refs%2Fconvert%2Fparquet/default",
        "test",
    ),
)
BENCHMARKS_BY_NAME = {b.name: b for b in BENCHMARK_LIST}


@functools.cache
def _classnames() -> dict:
    with open(CLASSNAMES_FILE, encoding="utf-8") as f:
        return json.load(f)


def shared_datasets_dir() -> Path:
    """$WDYS_SHARED_DATASETS, else the team's `shared/datasets` beside the checkout."""
    env = settings.SHARED_DATASETS.text()
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


# Matching a copy's class names to the benchmark's ------------------------------------------------


def name_key(name: str) -> str:
    """`/a/apartment_building/outdoor`, `Apartment-Building outdoor` -> `apartment building outdoor`."""
    key = re.sub(r"^/[a-z]/", "", name.strip().lower())
    return " ".join(re.sub(r"[\s_/\-]+", " ", key).split())


@functools.cache
def _lookup(name: str) -> dict[str, int]:
    """Name key -> class index, over the curated names and the dataset's own (`raw`) names; a key
    that two classes share (ImageNet's two `missile`s) is left out."""
    entry = _classnames()[name]
    found: dict[str, int] = {}
    shared: set[str] = set()
    for names in (entry["names"], entry.get("raw", [])):
        for index, class_name in enumerate(names):
            key = name_key(class_name)
            if found.setdefault(key, index) != index:
                shared.add(key)
    return {k: v for k, v in found.items() if k not in shared}


def align(bench: Benchmark, found: Sequence[str], where: str) -> list[int] | None:
    """The canonical index of each of the copy's classes, or None when they are in canonical order."""
    if len(found) != bench.num_classes:
        raise BadDataset(
            f"{where} has {len(found)} classes, but {bench.title} ({bench.name!r}) has "
            f"{bench.num_classes}: a copy must hold every class of the benchmark's class list, "
            "an ImageFolder one folder per class (an empty folder counts), see docs/datasets.md"
        )
    lookup = _lookup(bench.name)
    matched = {i: lookup.get(name_key(n)) for i, n in enumerate(found)}
    if None not in matched.values() and len(set(matched.values())) == len(found):
        order = [j for j in matched.values() if j is not None]  # all of them, in the copy's order
        return None if order == list(range(len(found))) else order
    agree = sum(i == j for i, j in matched.items() if j is not None)
    moved = [(found[i], j) for i, j in matched.items() if j is not None and j != i]
    if len(moved) > agree:
        unknown = [found[i] for i, j in matched.items() if j is None][:10]
        raise BadDataset(
            f"{where}: the class names are {bench.title}'s but not in its order, and some are not "
            f"recognised ({unknown}), so the labels cannot be mapped; e.g. {moved[0][0]!r} is "
            f"class {moved[0][1]} ({bench.class_names[moved[0][1]]!r}); rename those classes"
        )
    return None  # names not (all) recognised: the copy's label order is taken as canonical


# Opening -------------------------------------------------------------------------------------


def _open_copy(bench: Benchmark, location: str, names: Sequence[str]) -> DatasetSource | None:
    """The first of `names` found in the copy at `location`, as Parquet or as an ImageFolder."""
    fs, root = fsspec.core.url_to_fs(location)
    for split in names:
        try:
            return open_parquet(bench.name, location, split, class_names=bench.class_names)
        except FileNotFoundError:
            pass
        if not root.endswith(".parquet") and fs.isdir(f"{root.rstrip('/')}/{split}"):
            return open_imagefolder(bench.name, location, split)
    return None


def _local_copies(bench: Benchmark) -> list[tuple[str, bool]]:
    """(location, explicit) of each local copy that exists, in order of preference."""
    copies = []
    explicit = settings.DATASET_DIR.named(bench.env_prefix).text()
    if explicit:
        copies.append((explicit, True))
    data_dir = settings.DATA_DIR.text()
    if data_dir and (Path(data_dir) / bench.name).exists():
        copies.append((str(Path(data_dir) / bench.name), False))
    shared = shared_datasets_dir() / bench.name
    if shared.exists():
        copies.append((str(shared), False))
    embedded = EMBEDDED_DATASETS / bench.name
    if embedded.exists():
        copies.append((str(embedded), False))
    return copies


def open_benchmark(bench: Benchmark, split: str) -> DatasetSource:
    """The benchmark's `split` (its evaluation split under any of its names, or another split the
    data has), with the benchmark's class names and labels in the benchmark's class order."""
    evaluation = bench.evaluation_split_names(split)
    names = evaluation or (split,)
    source, where = None, ""
    for location, explicit in _local_copies(bench):
        source, where = _open_copy(bench, location, names), location
        if source is None and explicit:
            raise DatasetNotFound(
                f"{bench.env_prefix}_DIR={location} has no split {split!r} (looked for {list(names)} "
                "as Parquet files or ImageFolder split folders)"
            )
        if source is not None:
            break
    if source is None:
        hub = settings.DATASET_HUB.named(bench.env_prefix).text() or bench.hub
        if split in bench.local_only_splits:
            raise DatasetNotFound(
                f"{bench.name} split {split!r} is only in a local copy, found none "
                f"({bench.env_prefix}_DIR, $WDYS_DATA_DIR/{bench.name}, {shared_datasets_dir() / bench.name})"
            )
        if not hub:
            raise DatasetNotFound(
                f"no Parquet export of {bench.title} is known on the hub: put a copy at "
                f"$WDYS_DATA_DIR/{bench.name} or {bench.env_prefix}_DIR, or set {bench.env_prefix}_HUB"
            )
        hub_split = bench.hub_split if evaluation else split
        try:
            source = open_parquet(bench.name, hub, hub_split, class_names=bench.class_names)
        except Exception as exc:  # offline, gated, or no such split: say what was looked for
            raise DatasetNotFound(
                f"{bench.name} split {split!r}: no local copy ({bench.env_prefix}_DIR, $WDYS_DATA_DIR/"
                f"{bench.name}, {shared_datasets_dir() / bench.name}) and the hub copy {hub} could not be "
                f"read: {type(exc).__name__}: {exc}. The evaluation split is {bench.split!r}."
            ) from exc
        where = hub
    order = align(bench, source.class_names, f"{where} ({source.split})")
    relabelled = relabel(source, bench.name, split, bench.class_names, order)
    return replace(relabelled, note=f"{bench.name} {split}: {source.note or where}")


def relabel(
    source: DatasetSource, name: str, split: str, class_names: Sequence[str], order: list[int] | None
) -> DatasetSource:
    """`source` under the benchmark's name, split and class list, its labels mapped through `order`."""
    mapping = None if order is None else pa.array(order, pa.int64())

    def read_rows(rows: Sequence[int]) -> pa.Table:
        table = source.read_rows(rows)
        table = table.set_column(
            table.schema.get_field_index("image_id"), "image_id", pa.array(image_ids(split, rows))
        )
        if mapping is not None:
            labels = pc.take(mapping, table.column("label").combine_chunks())
            table = table.set_column(table.schema.get_field_index("label"), "label", labels)
        return table

    return DatasetSource(name, split, tuple(class_names), source.num_rows, read_rows)
