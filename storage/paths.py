"""Every path wdys reads or writes is made here.

Layout: `<root>/<table>/<key>=<value>/.../v=<version>/shard-<index>.parquet`, hive-style, with the
keys of `storage.schemas` in order. The keys are everything a result depends on, so a shard that
exists is a valid cache entry and is never recomputed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import fsspec

from core import settings
from core.errors import BadParameter

if TYPE_CHECKING:
    from storage.schemas import Table

NONE = "none"  # partition value for a key that does not apply (e.g. no describer)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_VALUE = 80
DATASET_LAYOUTS = ("parquet", "imagefolder", "wds")  # `<layout>:<location>` names a user's own dataset


def resolve_root(root: str | None = None) -> str:
    """Flow parameter first, then $WDYS_ROOT, then ./data: any fsspec URL (`s3://bucket/prefix`).
    Local roots, `file://` URLs included, become absolute paths. A root holding a password is
    refused: credentials come from the environment, never from a parameter, a path or a log."""
    root = root or settings.ROOT.text()
    root = root.removeprefix("file://")
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    elif urlsplit(root).password is not None:
        raise BadParameter(
            "the storage root must not hold credentials; set them in the environment "
            "(for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or the filesystem's config"
        )
    check_protocol(root)
    return root.rstrip("/")


def check_protocol(root: str) -> None:
    """A malformed or unknown storage URL fails here, before any model loads."""
    if "://" not in root:
        return
    protocol, _, rest = root.partition("://")
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise BadParameter(
            f"storage root {root!r}: unknown or unavailable protocol {protocol!r} ({exc})"
        ) from exc
    if not rest.strip("/"):
        raise BadParameter(f"storage root {root!r} names no bucket or path")


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def split_dataset_spec(spec: str) -> tuple[str | None, str, str | None]:
    """(layout, location, name) of a user's dataset spec `<layout>:<location>[?name=<name>]`, or
    (None, spec, None) for a registered benchmark's name."""
    layout, sep, rest = spec.partition(":")
    if not sep or layout not in DATASET_LAYOUTS:
        return None, spec, None
    location, _, query = rest.partition("?name=")
    return layout, location, query or None


def dataset_name(spec: str) -> str:
    """The readable name a dataset's results are filed under: a benchmark's own name; the name a
    user gave (`imagefolder:/data/photos?name=pets`); else the folder or file name plus a short hash
    of the full location, which keeps two folders called `photos` apart."""
    layout, location, name = split_dataset_spec(spec)
    if layout is None or name:
        return name or spec
    location = location.rstrip("/")
    stem = location.rsplit("/", 1)[-1].removesuffix(".parquet") or layout
    return f"{stem}-{hashlib.sha256(location.encode()).hexdigest()[:6]}"


def partition_value(value: object) -> str:
    """A path-safe rendering of a key value: model ids like 'open_clip:ViT-B-32/openai' become
    'open_clip_ViT-B-32_openai', a user's dataset spec its `dataset_name`; overly long values (local
    checkpoint paths) keep a hash suffix."""
    if isinstance(value, str) and split_dataset_spec(value)[0]:
        value = dataset_name(value)
    text = _UNSAFE.sub("_", str(value)).strip("_") or NONE
    if len(text) > _MAX_VALUE:
        digest = hashlib.sha256(str(value).encode()).hexdigest()[:10]
        text = f"{text[: _MAX_VALUE - 11]}_{digest}"
    return text


def table_layout(table: str | Table) -> Table:
    """A table's declaration, imported when a path is made rather than with this module: it needs
    pyarrow, which `wdys query` (storage/connection.py, which uses the paths here) must not wait for."""
    from storage.schemas import TABLES

    return TABLES[table] if isinstance(table, str) else table


def partition_dir(root: str, table: str | Table, keys: Mapping[str, object]) -> str:
    spec = table_layout(table)
    missing = set(spec.partition_keys) - set(keys)
    extra = set(keys) - set(spec.partition_keys)
    if missing or extra:
        raise ValueError(f"table {spec.name}: missing keys {sorted(missing)}, unexpected {sorted(extra)}")
    parts = [f"{k}={partition_value(keys[k])}" for k in spec.partition_keys]
    return "/".join([root, spec.name, *parts, f"v={spec.version}"])


def shard_path(root: str, table: str | Table, keys: Mapping[str, object], shard: int) -> str:
    return f"{partition_dir(root, table, keys)}/shard-{shard:05d}.parquet"


# The pending file's Parquet metadata key: its shard's items still missing, as a JSON list of
# [item key, times asked, last error] (the `pending` view reads it).
PENDING_ITEMS = "wdys.attempts"


def pending_path(path: str) -> str:
    """Where the final answers of a shard that still has transiently failed items wait for those
    items: hidden (a leading '.'), so no table glob or view ever reads it as a result."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name.removesuffix('.parquet')}.pending.parquet"


def table_glob(root: str, table: str) -> str:
    """Every shard of a table. Temp and pending files start with '.', which the glob excludes
    explicitly: DuckDB's `*` matches a leading dot, so `*.parquet` would read a pending file's
    answers, and a half-written shard, as results."""
    depth = len(table_layout(table).partition_keys) + 1
    return "/".join([root, table, *(["*"] * depth), "[!.]*.parquet"])


def pending_glob(root: str, table: str) -> str:
    """Every pending file of a table (`pending_path`), at any depth (one lives only beside its
    shard): the glob needs no table declaration, so the `pending` view opens without pyarrow."""
    return "/".join([root, table, "**", ".*.pending.parquet"])


def catalog_path(root: str) -> str:
    return f"{root}/wdys.duckdb"
