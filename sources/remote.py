"""Remote dataset bytes downloaded once per machine: a local cache of the byte ranges read from a
`wds:` or `parquet:` source on the hub (`hf://`) or any fsspec URL.

A remote file is read by exact ranged requests (no read-ahead): a tar shard's headers, a Parquet
file's footer, then only the images a run selects. Every range downloaded is written into a sparse
local file named by the remote file's etag (the hub's LFS sha256 or git blob id, an object store's
ETag), and listed beside it; a later read, by any stage or worker process, takes what is held and
asks only for the rest. The cache follows the Hugging Face hub's: one folder per repository
(`datasets--<org>--<name>`, other URLs `<protocol>--<host>--<path>`) under `$HF_HUB_CACHE`
(else `$WDYS_DATA_DIR/.cache/hub`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), wdys's
files in its `wdys/` subfolder. A cached file is used only while its etag and size match the
remote's; `wdys datasets --clear-cache [NAME ...]` removes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec

from core import settings

LOCAL_PROTOCOLS = {"file", "local", "memory"}
FORMAT = 1  # of the range lists and indexes kept


def is_remote(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether reads of `fs` go over the network (and so through the cache)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return not LOCAL_PROTOCOLS & set(protocols)


def cache_root() -> Path:
    explicit = settings.HF_HUB_CACHE.text()
    if explicit:
        return Path(explicit)
    if settings.DATA_DIR.text():
        return Path(settings.DATA_DIR.text()) / ".cache" / "hub"
    home = settings.HF_HOME.text()
    return Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub"


def repo_folder(location: str) -> Path:
    """The cache folder of a source location: the hub's `datasets--<org>--<name>` for `hf://`."""
    found = re.match(r"^hf://(datasets|models|spaces)/([^/@]+)/([^/@]+)", location)
    if found:
        name = f"{found.group(1)}--{found.group(2)}--{found.group(3)}"
    else:
        protocol, _, rest = location.partition("://")
        name = "--".join([protocol or "file", *[p for p in rest.split("/") if p]])
    return cache_root() / re.sub(r"[^A-Za-z0-9._-]", "_", name) / "wdys"


def etag_of(fs: fsspec.AbstractFileSystem, path: str, info: dict) -> str:
    """What names a remote file's content: the LFS sha256 or blob id on the hub, an ETag elsewhere."""
    lfs = info.get("lfs")
    sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
    tag = sha or info.get("blob_id") or info.get("ETag") or info.get("etag") or fs.ukey(path)
    tag = str(tag).strip('"')
    return tag if re.fullmatch(r"[A-Za-z0-9_-]{8,128}", tag) else hashlib.sha256(tag.encode()).hexdigest()


def _merge(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def _missing(start: int, end: int, held: list[list[int]]) -> list[tuple[int, int]]:
    gaps, at = [], start
    for s, e in held:
        if e <= at or s >= end:
            continue
        if s > at:
            gaps.append((at, s))
        at = max(at, e)
    if at < end:
        gaps.append((at, end))
    return gaps


class CachedFile:
    """One remote file read through the cache: `read(start, end)` downloads only what is not held."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, folder: Path, info: dict | None = None):
        info = info or fs.info(path)
        self.fs, self.path, self.size = fs, path, int(info["size"])
        self.etag = etag_of(fs, path, info)
        self.blob = folder / "blobs" / self.etag
        self.listed = folder / "blobs" / f"{self.etag}.json"
        self.index_file = folder / "index" / f"{self.etag}.json"
        self._remote: Any = None
        self.blob.parent.mkdir(parents=True, exist_ok=True)

    def held(self) -> list[list[int]]:
        """The ranges held, verified against the remote's etag and size (else nothing)."""
        try:
            meta = json.loads(self.listed.read_text())
            size = self.blob.stat().st_size
        except (OSError, ValueError):
            return []
        ranges = meta.get("ranges", [])
        ok = (meta.get("format"), meta.get("etag"), meta.get("size")) == (FORMAT, self.etag, self.size)
        return ranges if ok and all(0 <= s < e <= min(size, self.size) for s, e in ranges) else []

    def _record(self, added: list[tuple[int, int]]) -> None:
        with open(self.listed.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # workers add ranges to the same list
            ranges = _merge(self.held() + [list(r) for r in added])
            meta = {"format": FORMAT, "etag": self.etag, "size": self.size, "path": self.path}
            temp = self.listed.with_name(f".{self.listed.name}.{os.getpid()}")
            temp.write_text(json.dumps(meta | {"ranges": ranges}))
            temp.replace(self.listed)

    def _download(self, start: int, end: int) -> bytes:
        if self._remote is None:  # exact ranges: no read-ahead block
            self._remote = self.fs.open(self.path, "rb", cache_type="none")
        handle = self._remote
        handle.seek(start)
        data = handle.read(end - start)
        if len(data) != end - start:
            raise OSError(f"{self.path}: the source gave {len(data)} of bytes {start}-{end}")
        return data

    def read_many(self, spans: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (start, end), downloading the parts not held, each once."""
        spans = [(max(0, s), min(e, self.size)) for s, e in spans]
        held = self.held()
        gaps = _merge([list(g) for s, e in spans for g in _missing(s, e, held)])
        if gaps:
            fd = os.open(self.blob, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for s, e in gaps:
                    os.pwrite(fd, self._download(s, e), s)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._record([(s, e) for s, e in gaps])
        with open(self.blob, "rb") as f:
            return [os.pread(f.fileno(), e - s, s) if e > s else b"" for s, e in spans]

    def read(self, start: int, end: int) -> bytes:
        return self.read_many([(start, end)])[0]

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    # A small document kept with the file (a tar shard's index), read only for the same etag.
    def load_index(self) -> list | None:
        try:
            kept = json.loads(self.index_file.read_text())
        except (OSError, ValueError):
            return None
        return kept["entries"] if (kept.get("format"), kept.get("etag")) == (FORMAT, self.etag) else None

    def keep_index(self, entries: list) -> None:
        self.index_file.parent.mkdir(parents=True, exist_ok=True)
        temp = self.index_file.with_name(f".{self.index_file.name}.{os.getpid()}")
        temp.write_text(json.dumps({"format": FORMAT, "etag": self.etag, "entries": entries}))
        temp.replace(self.index_file)


class RangeReader(io.RawIOBase):
    """A seekable binary file over a `CachedFile` (what pyarrow reads a Parquet file through)."""

    def __init__(self, cached: CachedFile):
        self.cached, self.pos = cached, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.cached.size}[whence]
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer) -> int:
        data = self.cached.read(self.pos, self.pos + len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def cached_bytes(location: str) -> int:
    """Bytes of `location`'s files held in the cache."""
    total = 0
    for listed in (repo_folder(location) / "blobs").glob("*.json"):  # the range lists
        try:
            total += sum(e - s for s, e in json.loads(listed.read_text()).get("ranges", []))
        except (OSError, ValueError):
            continue
    return total


def clear(location: str | None = None) -> int:
    """Remove `location`'s cached bytes and indexes (without one: every source's); returns the
    bytes freed. Only wdys's `wdys/` folders go; the hub's own files beside them stay."""
    folders = [repo_folder(location)] if location else list(cache_root().glob("*/wdys"))
    freed = 0
    for folder in folders:
        for listed in (folder / "blobs").glob("*.json"):
            try:
                freed += sum(e - s for s, e in json.loads(listed.read_text()).get("ranges", []))
            except (OSError, ValueError):
                continue
        shutil.rmtree(folder, ignore_errors=True)
    return freed
