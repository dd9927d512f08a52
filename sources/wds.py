"""WebDataset in CLIP_benchmark's layout: `<split>/*.tar` shards (or those `<split>/nshards.txt`
counts), each sample `KEY.<jpg|jpeg|png|webp>` with its integer label in `KEY.cls`, the class names
in `classnames.txt` beside the split folders, `zeroshot_classification_templates.txt` optional.

Local folders and any fsspec URL (`hf://datasets/clip-benchmark/wds_vtab-cifar10`, `s3://...`).
Opening a split reads each shard's tar headers once (an index of offsets and labels, never the
images; `sources.tarindex`, which refuses a shard cut short), so a row's image is read later by a
ranged read of its own shard. A remote shard is read through the byte cache (`sources.remote`),
its index kept there by the shard's etag: built once per machine, each byte downloaded once.
A sample without an image is kept and fails alone when decoded; a sample without a readable label
is a broken copy and refused when the split is opened.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from core.errors import BadDataset, DatasetNotFound
from sources import remote
from sources.base import DatasetSource, image_ids
from sources.tarindex import members

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"


@dataclass(frozen=True)
class Sample:
    shard: int  # index into the split's shard list
    key: str
    offset: int  # where the image's bytes start in the shard, -1 when the sample has no image
    size: int
    label: int


def _shard_number(path: str) -> tuple[int, str]:
    stem = path.rsplit("/", 1)[-1].removesuffix(".tar")
    return (int(stem), stem) if stem.isdigit() else (-1, stem)


def split_shards(fs: fsspec.AbstractFileSystem, root: str, split: str) -> list[str]:
    """The split's shards in order: `0.tar .. n-1.tar` when `nshards.txt` says n, else every
    `<split>/*.tar` in numeric order."""
    folder = f"{root}/{split}"
    counted = f"{folder}/nshards.txt"
    if fs.exists(counted):
        with fs.open(counted, "rt") as f:
            count = int(f.read().strip())
        return [f"{folder}/{i}.tar" for i in range(count)]
    return sorted(fs.glob(f"{folder}/*.tar"), key=_shard_number)


def is_wds(location: str, split: str) -> bool:
    """Whether `location` holds `split` as WebDataset shards."""
    fs, root = fsspec.core.url_to_fs(location)
    return bool(split_shards(fs, root.rstrip("/"), split))


def read_lines(fs: fsspec.AbstractFileSystem, path: str) -> list[str] | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _member_key(name: str) -> tuple[str, str]:
    """`train/0001.cls` -> (`train/0001`, `cls`): WebDataset's key is the path up to the first dot
    of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _label(raw: bytes, key: str, shard: str) -> int:
    text = raw.decode("utf-8", "replace").strip()
    if not re.fullmatch(r"-?\d+", text):
        raise BadDataset(f"wds {shard}: sample {key!r} has no integer label in its .cls ({text[:20]!r})")
    return int(text)


def _entries(path: str, size: int, read_at) -> list[list]:
    """[key, image offset (-1 without one), image size, label] per sample, in tar order, from the
    shard's headers and `.cls` members (image bytes are never read)."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    order: dict[str, None] = {}
    for member in members(read_at, size, path, lambda name: _member_key(name)[1] == "cls"):
        key, ext = _member_key(member.name)
        order.setdefault(key)
        if ext in IMAGE_EXTENSIONS:
            images[key] = (member.offset, member.size)
        elif ext == "cls":
            labels[key] = _label(member.data or b"", key, path)
    missing = [k for k in order if k not in labels]
    if missing:
        raise BadDataset(f"wds {path}: {len(missing)} sample(s) without a .cls label, e.g. {missing[0]!r}")
    return [[k, *images.get(k, (-1, 0)), labels[k]] for k in order]


def index_shard(fs: fsspec.AbstractFileSystem, path: str, shard: int, location: str = "") -> list[Sample]:
    """One shard's samples in tar order. A remote shard's index is kept in the byte cache under the
    shard's etag, built once per machine from its headers (`sources.remote`)."""
    if remote.is_remote(fs):
        cached = remote.CachedFile(fs, path, remote.repo_folder(location or path))
        try:
            entries = cached.load_index()
            if entries is None:
                entries = _entries(path, cached.size, cached.read)
                cached.keep_index(entries)
        finally:
            cached.close()
    else:
        with fs.open(path, "rb") as f:
            size = fs.size(path)

            def read_at(start: int, end: int) -> bytes:
                f.seek(start)
                return f.read(end - start)

            entries = _entries(path, size, read_at)
    return [Sample(shard, *entry) for entry in entries]


@functools.lru_cache(maxsize=32)
def _index(location: str, split: str, shards: tuple[tuple[str, str], ...]) -> tuple[Sample, ...]:
    """Every shard indexed once per process (the plan and each ingest task reopen the split); each
    shard's version is part of the key, so a changed copy is indexed again. Remote shards are
    indexed several at a time (each one a run of small ranged reads)."""
    fs = fsspec.core.url_to_fs(location)[0]
    workers = 8 if remote.is_remote(fs) else 1
    with ThreadPoolExecutor(workers) as pool:
        indexed = pool.map(lambda item: index_shard(fs, item[1][0], item[0], location), enumerate(shards))
        return tuple(s for samples in indexed for s in samples)


def _versions(fs: fsspec.AbstractFileSystem, shards: list[str], location: str) -> tuple[tuple[str, str], ...]:
    """Each shard with what tells its content apart (fsspec's `ukey`: size and mtime of a local
    file, the blob id on the hub): not the size alone, since tar pads every shard to 10 KiB records,
    so a rewritten shard often keeps its size."""
    versions = []
    for path in shards:
        try:
            versions.append((path, fs.ukey(path)))
        except FileNotFoundError as exc:
            raise DatasetNotFound(f"wds {location}: shard {path} is missing (nshards.txt counts it)") from exc
    return tuple(versions)


def open_wds(name: str, location: str, split: str, class_names: Sequence[str] | None = None) -> DatasetSource:
    """`class_names` is used only where the copy has no `classnames.txt`."""
    fs, root = fsspec.core.url_to_fs(location)
    root = root.rstrip("/")
    shards = split_shards(fs, root, split)
    if not shards:
        if not fs.exists(root):
            raise DatasetNotFound(f"wds {location}: no such folder")
        raise DatasetNotFound(f"wds {location}: no shards for split {split!r} (expected {split}/*.tar)")
    classes = read_lines(fs, f"{root}/{CLASSNAMES}") or (list(class_names) if class_names else None)
    if not classes:
        raise BadDataset(f"wds {location}: no {CLASSNAMES} beside the split folders")
    samples = _index(location, split, _versions(fs, shards, location))
    bad = next((s for s in samples if not 0 <= s.label < len(classes)), None)
    if bad is not None:
        raise BadDataset(
            f"wds {location}: sample {bad.key!r} has label {bad.label}, outside the {len(classes)} classes"
        )
    templates = read_lines(fs, f"{root}/{TEMPLATES}")
    note = (
        f"wds {location} ({split}): {len(samples)} samples in {len(shards)} shard(s), {len(classes)} classes"
        + (f", {len(templates)} templates in {TEMPLATES}" if templates else "")
    )

    def read_rows(rows: Sequence[int]) -> pa.Table:
        return pa.table(
            {
                "image_id": image_ids(split, rows),
                "row": pa.array(rows, pa.int64()),
                "label": pa.array([samples[r].label for r in rows], pa.int64()),
                "image": pa.array(read_images(fs, shards, [samples[r] for r in rows], location), pa.binary()),
                "uri": pa.nulls(len(rows), pa.string()),
            }
        )

    return DatasetSource(name, split, tuple(classes), len(samples), read_rows, note)


def read_images(
    fs: fsspec.AbstractFileSystem, shards: list[str], samples: Sequence[Sample], location: str = ""
) -> list[bytes | None]:
    """Each sample's image bytes (None without one), one open file per shard touched; a remote
    shard's through the byte cache."""
    out: list[bytes | None] = [None] * len(samples)
    by_shard: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        if sample.offset >= 0:
            by_shard.setdefault(sample.shard, []).append(i)
    for shard, positions in by_shard.items():
        positions.sort(key=lambda p: samples[p].offset)
        spans = [(samples[i].offset, samples[i].offset + samples[i].size) for i in positions]
        if remote.is_remote(fs):
            cached = remote.CachedFile(fs, shards[shard], remote.repo_folder(location or shards[shard]))
            try:
                found = cached.read_many(spans)
            finally:
                cached.close()
        else:
            with fs.open(shards[shard], "rb") as f:
                found = [_read(f, start, end) for start, end in spans]
        for i, data in zip(positions, found, strict=True):
            out[i] = data
    return out


def _read(f, start: int, end: int) -> bytes:
    f.seek(start)
    return f.read(end - start)
