"""Bytes a run downloads from the hub (`fakes.hub` counting what it sends) for a multi-shard `wds:`
copy and the same images as a Parquet export: a `--limit` trial, a full run on a cold cache, and a
second full run into a fresh root (targets: <= 0.25x, <= 1.1x and <= 0.05x the copy).

A run here is what reads the source: the plan (opens the split), then one ingest per shard, each as
a fresh process would (no index or filesystem kept in memory), so only the byte cache on disk
(`sources.remote`) carries over between them and between runs. The images are random bytes of
realistic size (the readers never decode them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fakes.hub import FakeHub
from perf.figures import verdict

CLASSES = [f"class {i}" for i in range(10)]


def _image(rng: np.random.Generator, size: int) -> bytes:
    """A real PNG of noise (incompressible) of about `size` to 1.2 `size` bytes: a run decodes it."""
    side = int((size * rng.uniform(1.0, 1.2) / 3) ** 0.5)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def write_wds_copy(folder: Path, images: int, shards: int, image_size: int = 10_000) -> int:
    """CLIP_benchmark's layout, `images` samples dealt to `shards` shards; returns the shards' bytes."""
    rng = np.random.default_rng(0)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    per = -(-images // shards)
    for shard in range(shards):
        with tarfile.open(folder / "test" / f"{shard}.tar", "w") as tar:
            for i in range(shard * per, min(images, (shard + 1) * per)):
                for name, data in (
                    (f"s{i:07d}.png", _image(rng, image_size)),
                    (f"s{i:07d}.cls", b"%d" % (i % 10)),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    (folder / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    return sum(p.stat().st_size for p in (folder / "test").glob("*.tar"))


def write_parquet_copy(
    folder: Path, images: int, files: int = 2, image_size: int = 10_000, row_group: int = 100
) -> int:
    """A Hugging Face Parquet export (`data/test-*.parquet`, row groups of 100 as the hub's); returns
    its bytes."""
    rng = np.random.default_rng(0)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    per = -(-images // files)
    for k in range(files):
        rows = range(k * per, min(images, (k + 1) * per))
        table = pa.table(
            {
                "image": pa.array([{"bytes": _image(rng, image_size), "path": None} for _ in rows]),
                "label": pa.array([i % 10 for i in rows], pa.int64()),
            }
        )
        pq.write_table(
            table, folder / "data" / f"test-{k:05d}-of-{files:05d}.parquet", row_group_size=row_group
        )
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    return sum(p.stat().st_size for p in (folder / "data").glob("*.parquet"))


def fresh_process() -> None:
    """What a new worker process starts without: the in-memory shard index and filesystems."""
    from huggingface_hub import HfFileSystem

    from sources import wds

    wds._index.cache_clear()
    HfFileSystem.clear_instance_cache()


def run(dataset: str, limit: int | None, shard_size: int) -> int:
    """A run's reads of the source: the plan, then each shard's ingest; returns the rows read."""
    from sources.registry import open_dataset
    from tasks.plan import select_rows

    fresh_process()
    rows = select_rows(open_dataset(dataset, "test").num_rows, limit, None)
    for start in range(0, len(rows), shard_size):
        fresh_process()
        open_dataset(dataset, "test").manifest(rows[start : start + shard_size])
    return len(rows)


def runs(hub: FakeHub, dataset: str, limit: int, shard_size: int) -> dict[str, int]:
    """Bytes sent for a `limit` trial, a full run on an empty cache and a second full run."""
    from sources import remote

    sent = {}
    for name, rows in (("trial", limit), ("full", None), ("again", None)):
        if name == "full":
            remote.clear()  # a cold machine: nothing kept from the trial
        before = hub.bytes_sent
        run(dataset, rows, shard_size)
        sent[name] = hub.bytes_sent - before
    return sent


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[FakeHub]:
    """The hub stand-in with `huggingface_hub` pointed at it and a byte cache of its own (it reads
    `HF_ENDPOINT` at import into two constants, so those are set too)."""
    import huggingface_hub.constants as constants

    hub = FakeHub()
    saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE)
    os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(folder / "cache"))
    constants.ENDPOINT, constants.HF_HUB_OFFLINE = hub.endpoint, False
    constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    try:
        yield hub
    finally:
        hub.close()
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE = saved
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        fresh_process()


def figure(images: int = 1_000, limit: int = 100, shard_size: int = 256) -> list[dict]:
    """The section of `make bench`: both layouts, each run's bytes against the copy's."""
    figures = []
    with tempfile.TemporaryDirectory() as tmp, serving(Path(tmp)) as hub:
        copies = {
            "wds": write_wds_copy(Path(tmp) / "wds", images, shards=4),
            "parquet": write_parquet_copy(Path(tmp) / "parquet", images),
        }
        for layout, size in copies.items():
            hub.add(f"someone/{layout}", Path(tmp) / layout)
            sent = runs(hub, f"{layout}:hf://datasets/someone/{layout}", limit, shard_size)
            for name, target in (("trial", 0.25), ("full", 1.1), ("again", 0.05)):
                ratio = sent[name] / size
                what = (
                    f"--limit {limit}"
                    if name == "trial"
                    else "full run" + (" again" if name == "again" else "")
                )
                raw = f"{sent[name]:,} of {size:,} bytes, {images} images"
                figures.append(
                    verdict(f"{layout} {what} / copy bytes", ratio, f"<= {target}x", ratio <= target, raw)
                )
    return figures
