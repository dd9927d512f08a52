"""The zero-shot benchmarks: each with its evaluation split, its class list and where its data lives.

A benchmark's class names are fixed here (`classnames.json`, see docs/datasets.md for where each
list comes from), whatever the data calls its classes. The data is read from the first of:

1. `$WDYS_<NAME>_DIR` (e.g. `WDYS_IMAGENET1K_DIR`), a copy the user already holds;
2. `$WDYS_DATA_DIR/<name>/`;
3. the team's shared copy, `shared/datasets/<name>/` (see `shared_datasets_dir`);
4. the copy shipped with the package, `sources/embedded/<name>/` (CIFAR-10's `dev` sample only);
5. the benchmark's public source (`Benchmark.hub`, `$WDYS_<NAME>_HUB` replaces it): CLIP_benchmark's
   WebDataset copy or a Parquet export on the Hugging Face hub, through fsspec, or the official
   archive through torchvision (Places365, `sources.archive`).

A local copy is Hugging Face Parquet (`<split>-*.parquet`, `data/<split>-*.parquet`, ..., read by
`sources.parquet`), CLIP_benchmark's WebDataset (`<split>/*.tar`, `sources.wds`) or an ImageFolder
(`<split>/<class folder>/<image>`). Its classes are
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

import pyarrow as pa
import pyarrow.compute as pc

from core import settings
from core.errors import BadDataset, DatasetNotFound
from core.guard import causes
from sources.archive import open_archive
from sources.base import DatasetSource, image_ids
from sources.layouts import LAYOUTS, layout_of
from storage.paths import split_dataset_spec

CLASSNAMES_FILE = Path(__file__).with_name("classnames.json")
# Copies shipped inside the package (CIFAR-10 `dev`, 1,000 images): the default run needs no download.
EMBEDDED_DATASETS = Path(__file__).with_name("embedded")


@dataclass(frozen=True)
class Benchmark:
    name: str  # the registry name (CLIP_benchmark's)
    title: str
    split: str  # the evaluation split
    hub: str | None  # where the data is read without a local copy: `<layout>:<fsspec URL>`, if known
    hub_split: str  # the evaluation split's name in that source
    size: int | None = None  # images in the evaluation split (docs/datasets.md says where from)
    split_aliases: tuple[str, ...] = ()  # other names the evaluation split has in local copies
    local_only_splits: tuple[str, ...] = ()  # splits that exist only in a local copy
    classes: int | None = None  # without a curated list (the collection): the class count
    terms: str = ""  # whose terms of use apply, where the source is a mirror of a dataset with its own

    @property
    def class_names(self) -> tuple[str, ...]:
        """The curated list (`classnames.json`); empty for the collection, whose copies name their
        classes (CLIP_benchmark's `classnames.txt`)."""
        return tuple(_classnames().get(self.name, {}).get("names", ()))

    @property
    def num_classes(self) -> int:
        return len(self.class_names) or self.classes or 0

    @property
    def env_prefix(self) -> str:
        return "WDYS_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    def evaluation_split_names(self, split: str) -> tuple[str, ...] | None:
        """The names to look for when `split` is the evaluation split, else None. `test` always
        means the evaluation split, as in CLIP_benchmark (ImageNet's `test` is its val set)."""
        if split in (self.split, "test", self.hub_split, *self.split_aliases):
            return tuple(dict.fromkeys((self.split, self.hub_split, *self.split_aliases)))
        return None


HF = "hf://datasets/"
IMAGENET_TERMS = (
    "ImageNet's terms of access apply (non-commercial research and education, image-net.org), "
    "not the mirror's"
)
PLACES_TERMS = "Places365's terms apply (MIT CSAIL: non-commercial research and education only)"
CLIP_BENCHMARK = HF + "clip-benchmark/wds_"  # CLIP_benchmark's WebDataset copies (`test` split)
BENCHMARK_LIST: tuple[Benchmark, ...] = (
    Benchmark(
        "imagenet1k",
        "ImageNet-1k",
        "val",
        f"wds:{CLIP_BENCHMARK}imagenet1k",
        "test",
        50_000,
        split_aliases=("validation",),  # Hugging Face's name for it (ILSVRC/imagenet-1k)
        terms=IMAGENET_TERMS,
    ),
    Benchmark(
        "places365",
        "Places365",
        "val",
        "torchvision:Places365",
        "val",
        36_500,
        split_aliases=("validation",),
        terms=PLACES_TERMS,
    ),
    Benchmark("sun397", "SUN397", "test", f"parquet:{HF}tanganke/sun397", "test", 19_850),
    Benchmark("food101", "Food-101", "test", f"parquet:{HF}ethz/food101", "validation", 25_250),
    Benchmark("pets", "Oxford-IIIT Pets", "test", f"parquet:{HF}timm/oxford-iiit-pet", "test", 3_669),
    Benchmark("dtd", "DTD", "test", f"parquet:{HF}tanganke/dtd", "test", 1_880),
    Benchmark(
        "cifar10",
        "CIFAR-10",
        "test",
        f"parquet:{HF}uoft-cs/cifar10/plain_text",
        "test",
        10_000,
        local_only_splits=("dev",),
    ),
    Benchmark("cifar100", "CIFAR-100", "test", f"parquet:{HF}uoft-cs/cifar100/cifar100", "test", 10_000),
    Benchmark("cars", "Stanford Cars", "test", f"parquet:{HF}tanganke/stanford_cars", "test", 8_041),
    Benchmark("caltech101", "Caltech-101", "test", f"wds:{CLIP_BENCHMARK}vtab-caltech101", "test", 6_085),
)
PAPER_BENCHMARKS = tuple(b.name for b in BENCHMARK_LIST)  # the paper's ten (its authors' code)


def clip_benchmark_wds(name: str, classes: int, size: int, dataset: str | None = None) -> Benchmark:
    """A zero-shot classification set of CLIP_benchmark's collection, read from its `wds_*` copy
    (`dataset`: CLIP_benchmark's name, `vtab/flowers` -> repo `wds_vtab-flowers`); class names from
    the copy's `classnames.txt`, the evaluation split is `test`."""
    repo = (dataset or name).replace("/", "-")
    return Benchmark(
        name, dataset or name, "test", f"wds:{CLIP_BENCHMARK}{repo}", "test", size, classes=classes
    )


# CLIP_benchmark's collection beyond the paper's ten ("vtab+" less retrieval and multi-label sets):
# name, classes, test images (docs/datasets.md names the source of each size).
COLLECTION_LIST: tuple[Benchmark, ...] = (
    clip_benchmark_wds("imagenetv2", 1000, 10_000),
    clip_benchmark_wds("imagenet_sketch", 1000, 50_889),
    clip_benchmark_wds("imagenet-a", 200, 7_500),
    clip_benchmark_wds("imagenet-r", 200, 30_000),
    clip_benchmark_wds("objectnet", 113, 18_574),
    clip_benchmark_wds("fgvc_aircraft", 100, 3_333),
    clip_benchmark_wds("gtsrb", 43, 12_630),
    clip_benchmark_wds("country211", 211, 21_100),
    clip_benchmark_wds("stl10", 10, 8_000),
    clip_benchmark_wds("mnist", 10, 10_000),
    clip_benchmark_wds("fer2013", 7, 7_178),
    clip_benchmark_wds("renderedsst2", 2, 1_821),
    clip_benchmark_wds("flowers", 102, 6_149, "vtab/flowers"),
    clip_benchmark_wds("eurosat", 10, 5_400, "vtab/eurosat"),
    clip_benchmark_wds("resisc45", 45, 6_300, "vtab/resisc45"),
    clip_benchmark_wds("svhn", 10, 26_032, "vtab/svhn"),
    clip_benchmark_wds("pcam", 2, 32_768, "vtab/pcam"),
    clip_benchmark_wds("clevr_count_all", 8, 15_000, "vtab/clevr_count_all"),
    clip_benchmark_wds("clevr_closest_object_distance", 6, 15_000, "vtab/clevr_closest_object_distance"),
    clip_benchmark_wds("dmlab", 6, 22_735, "vtab/dmlab"),
    clip_benchmark_wds("kitti_closest_vehicle_distance", 4, 711, "vtab/kitti_closest_vehicle_distance"),
    clip_benchmark_wds("diabetic_retinopathy", 5, 42_670, "vtab/diabetic_retinopathy"),
)
BENCHMARK_LIST += COLLECTION_LIST
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
    if not bench.class_names:  # the collection: the copy's own class list is the benchmark's
        return None
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


def open_copy(bench: Benchmark, location: str, names: Sequence[str]) -> DatasetSource | None:
    found = layout_of(location, names)
    if found is None:
        return None
    layout, split = found
    return LAYOUTS[layout].open(bench.name, location, split, bench.class_names)


def local_copies(bench: Benchmark) -> list[tuple[str, bool]]:
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


def hub_source(bench: Benchmark) -> str | None:
    """Where the benchmark is read without a local copy: `$WDYS_<NAME>_HUB` (a location, the layout
    detected, or `<layout>:<location>`), else the built-in source."""
    return settings.DATASET_HUB.named(bench.env_prefix).text() or bench.hub


def gated_hint(exc: BaseException, location: str) -> str | None:
    """The one thing to do when the hub refused a file because the repository is gated."""
    if not any(type(cause).__name__ == "GatedRepoError" for cause in causes(exc)):
        return None
    repo = re.sub(r"^hf://datasets/([^/@]+/[^/@]+).*$", r"\1", location)
    return (
        f"{location} is gated: accept its terms at https://huggingface.co/datasets/{repo} and set "
        "HF_TOKEN to a token of that account"
    )


def _open_hub(bench: Benchmark, spec: str, split: str) -> DatasetSource:
    layout, location, _ = split_dataset_spec(spec)
    if layout in LAYOUTS:
        return LAYOUTS[layout].open(bench.name, location, split, bench.class_names)
    if spec.startswith("torchvision:"):
        return open_archive(bench.name, spec.partition(":")[2], split)
    source = open_copy(bench, location, (split,))
    if source is None:
        raise DatasetNotFound(f"no split {split!r} as Parquet, WebDataset or ImageFolder")
    return source


def open_benchmark(bench: Benchmark, split: str) -> DatasetSource:
    """The benchmark's `split` (its evaluation split under any of its names, or another split the
    data has), with the benchmark's class names and labels in the benchmark's class order; the
    evaluation split carries its known size (`expected_rows`), checked before a full run."""
    evaluation = bench.evaluation_split_names(split)
    names = evaluation or (split,)
    source, where = None, ""
    for location, explicit in local_copies(bench):
        source, where = open_copy(bench, location, names), location
        if source is None and explicit:
            raise DatasetNotFound(
                f"{bench.env_prefix}_DIR={location} has no split {split!r} (looked for {list(names)} "
                "as Parquet files, WebDataset shards or ImageFolder split folders)"
            )
        if source is not None:
            break
    if source is None:
        hub = hub_source(bench)
        if split in bench.local_only_splits:
            raise DatasetNotFound(
                f"{bench.name} split {split!r} is only in a local copy, found none "
                f"({bench.env_prefix}_DIR, $WDYS_DATA_DIR/{bench.name}, {shared_datasets_dir() / bench.name})"
            )
        if not hub:
            raise DatasetNotFound(
                f"no public source of {bench.title} is known: put a copy at "
                f"$WDYS_DATA_DIR/{bench.name} or {bench.env_prefix}_DIR, or set {bench.env_prefix}_HUB"
            )
        hub_split = bench.hub_split if evaluation else split
        try:
            source = _open_hub(bench, hub, hub_split)
        except BadDataset:  # read, and refused as it is (cut short, unpacked in part): says so itself
            raise
        except Exception as exc:  # offline, gated, or no such split: say what was looked for
            gated = gated_hint(exc, split_dataset_spec(hub)[1])
            if gated:
                raise DatasetNotFound(f"{bench.name}: {gated}") from exc
            raise DatasetNotFound(
                f"{bench.name} split {split!r}: no local copy ({bench.env_prefix}_DIR, $WDYS_DATA_DIR/"
                f"{bench.name}, {shared_datasets_dir() / bench.name}) and the source {hub} could not be "
                f"read: {type(exc).__name__}: {first_line(exc)}. The evaluation split is {bench.split!r}."
            ) from exc
        where = hub
    order = align(bench, source.class_names, f"{where} ({source.split})")
    relabelled = relabel(source, bench.name, split, bench.class_names or source.class_names, order)
    return replace(
        relabelled,
        note=f"{bench.name} {split}: {source.note or where}",
        expected_rows=bench.size if evaluation else None,
    )


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


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
