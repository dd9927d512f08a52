"""`wdys datasets`: where each registered benchmark would be read from now, and fetching one or all
into `$WDYS_DATA_DIR` ahead of a run.

A fetch copies the files of the benchmark's evaluation split from its source (CLIP_benchmark's
WebDataset shards with `classnames.txt`, or the Parquet files of the split) into
`<data dir>/.<name>.fetching/`, each file through `<file>.part`, continuing a part where an earlier
try stopped (ranged reads), one file at a time and never the whole file in memory. The finished copy
is counted: the evaluation split's known size, or the fetch fails and keeps what it has; only then
is it renamed `<data dir>/<name>`, where every run looks first. Places365 is fetched by torchvision
from its official archives into `<data dir>/places365/torchvision`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fsspec

from core import settings
from core.errors import BadDataset, BadParameter
from sources import remote
from sources.archive import archive_root, open_archive, unpacked
from sources.benchmarks import (
    BENCHMARK_LIST,
    BENCHMARKS_BY_NAME,
    PAPER_BENCHMARKS,
    Benchmark,
    hub_source,
    local_copies,
    open_copy,
)
from sources.layouts import layout_of
from sources.parquet import split_files
from sources.wds import CLASSNAMES, TEMPLATES, split_shards
from storage.paths import split_dataset_spec

CHUNK = 8 << 20  # bytes per ranged read
Log = Callable[[str], None]


@dataclass(frozen=True)
class Whereabouts:
    kind: str  # "local copy", "archive", "hub" or "none"
    location: str
    present: bool


def whereabouts(bench: Benchmark) -> Whereabouts:
    """Where a run would read the evaluation split now (without asking the network)."""
    names = bench.evaluation_split_names(bench.split) or (bench.split,)
    for location, _ in local_copies(bench):
        found = layout_of(location, names)
        if found:
            return Whereabouts("local copy", f"{location} ({found[0]}, {found[1]})", True)
    spec = hub_source(bench)
    if spec and spec.startswith("torchvision:"):
        root = archive_root(bench.name)
        return Whereabouts("archive", f"{spec} -> {root}", unpacked(root, bench.hub_split))
    if spec:
        return Whereabouts("hub", spec, False)
    return Whereabouts("none", "no public source known", False)


def listing() -> list[str]:
    """One line per registered benchmark."""
    lines = []
    width = max(len(b.name) for b in BENCHMARK_LIST)
    for bench in BENCHMARK_LIST:
        where = whereabouts(bench)
        size = f"{bench.size:,} images" if bench.size else "size unknown"
        state = {
            "hub": f"read remotely, each byte once (kept in the cache); `--fetch {bench.name}` keeps a copy",
            "archive": "not downloaded: the first run (or `--fetch`) downloads it",
            "none": "no copy",
        }.get(where.kind, "")
        state = "present" if where.present else state
        cached = remote.cached_bytes(split_dataset_spec(where.location)[1]) if where.kind == "hub" else 0
        extra = (f"  cached here: {cached / 1e6:,.1f} MB" if cached else "") + (
            f"  licence: {bench.terms}" if bench.terms else ""
        )
        lines.append(
            f"{bench.name:<{width}} {bench.split:<5} {size:>15}  {bench.num_classes:>4} classes  "
            f"{where.kind}: {where.location}  [{state}]{extra}"
        )
    return lines


def download(fs: fsspec.AbstractFileSystem, source: str, target: Path, log: Log) -> int:
    """`source` to `target` through `target.part`, continuing a part left by an earlier try."""
    size = int(fs.size(source))
    if target.exists() and target.stat().st_size == size:
        return size
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    if done > size:
        part.unlink()
        done = 0
    if done:
        log(f"  {target.name}: resuming at {done:,} of {size:,} bytes")
    with fs.open(source, "rb") as f, open(part, "ab") as out:
        f.seek(done)
        while done < size:
            chunk = f.read(min(CHUNK, size - done))
            if not chunk:
                raise OSError(f"{source}: the source ended at {done:,} of {size:,} bytes")
            out.write(chunk)
            done += len(chunk)
    part.replace(target)
    return size


def source_files(bench: Benchmark, spec: str) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    """(filesystem, source root, files under it) that make a copy of the evaluation split."""
    layout, location, _ = split_dataset_spec(spec)
    fs, root = fsspec.core.url_to_fs(location)
    root = root.rstrip("/")
    if layout == "wds":
        extra = [f"{root}/{n}" for n in (CLASSNAMES, TEMPLATES, f"{bench.hub_split}/nshards.txt")]
        files = split_shards(fs, root, bench.hub_split) + [p for p in extra if fs.exists(p)]
    elif layout == "parquet":
        files = split_files(location, bench.hub_split)[1]
    else:
        raise BadParameter(f"{bench.name}: cannot fetch from {spec!r} (a wds: or parquet: source)")
    return fs, root, files


def fetch(bench: Benchmark, data_dir: Path, log: Log = print) -> Path:
    """The benchmark's evaluation split copied into `data_dir/<name>`, counted."""
    target = data_dir / bench.name
    spec = hub_source(bench)
    if not spec:
        raise BadParameter(f"{bench.name}: no public source known; put a copy at {target}")
    if spec.startswith("torchvision:"):
        source = open_archive(bench.name, spec.partition(":")[2], bench.hub_split, data_dir, complete=True)
        return verified(bench, source.num_rows, archive_root(bench.name, data_dir), log)
    names = bench.evaluation_split_names(bench.split) or ()
    if target.exists() and layout_of(str(target), names):
        copy = open_copy(bench, str(target), names)
        return verified(bench, copy.num_rows if copy else 0, target, log)
    staging = data_dir / f".{bench.name}.fetching"
    fs, root, files = source_files(bench, spec)
    log(f"{bench.name}: {len(files)} file(s) from {spec} into {target}")
    total = 0
    for index, path in enumerate(files, 1):
        total += download(fs, path, staging / path[len(root) + 1 :], log)
        log(f"  [{index}/{len(files)}] {path[len(root) + 1 :]} ({total / 1e6:,.1f} MB so far)")
    copy = open_copy(bench, str(staging), (bench.hub_split,))
    verified(bench, copy.num_rows if copy else 0, staging, log)
    staging.rename(target)
    return target


def verified(bench: Benchmark, count: int, where: Path, log: Log) -> Path:
    if bench.size is not None and count != bench.size:
        raise BadDataset(
            f"{bench.name}: the copy at {where} holds {count} images, the evaluation split has {bench.size}"
        )
    log(f"{bench.name}: {count:,} images in {where} (the full {bench.split} split)")
    return where


def clear_cache(names: list[str]) -> None:
    """`--clear-cache`: the byte cache of remote sources (`sources.remote`) emptied."""
    unknown = sorted(set(names) - set(BENCHMARKS_BY_NAME))
    if unknown:
        raise BadParameter(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS_BY_NAME)}")
    if not names:
        print(f"removed {remote.clear() / 1e6:,.1f} MB of cached remote bytes under {remote.cache_root()}")
    for name in names:
        spec = hub_source(BENCHMARKS_BY_NAME[name]) or ""
        freed = remote.clear(split_dataset_spec(spec)[1]) if ":" in spec else 0
        print(f"{name}: removed {freed / 1e6:,.1f} MB of cached remote bytes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="wdys datasets", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fetch",
        nargs="+",
        metavar="NAME",
        help="benchmarks to fetch; `paper`: the paper's ten; `all`: every one",
    )
    parser.add_argument(
        "--data-dir", default=settings.DATA_DIR.text() or None, help="default: $WDYS_DATA_DIR"
    )
    parser.add_argument(
        "--clear-cache",
        nargs="*",
        metavar="NAME",
        help="remove the remote bytes kept for these benchmarks (none named: for every source)",
    )
    args = parser.parse_args(argv)
    if args.clear_cache is not None:
        clear_cache(args.clear_cache)
        return
    if not args.fetch:
        print("\n".join(listing()))
        return
    if not args.data_dir:
        raise BadParameter("fetching needs a data dir: set WDYS_DATA_DIR (runs read copies from there)")
    groups = {"all": [b.name for b in BENCHMARK_LIST], "paper": list(PAPER_BENCHMARKS)}
    names = [n for name in args.fetch for n in groups.get(name, [name])]
    unknown = sorted(set(names) - set(BENCHMARKS_BY_NAME))
    if unknown:
        raise BadParameter(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS_BY_NAME)}")
    for name in names:
        fetch(BENCHMARKS_BY_NAME[name], Path(args.data_dir), log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    from core.guard import guarded

    sys.exit(guarded(main, sys.argv[1:]))
