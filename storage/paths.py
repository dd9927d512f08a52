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
from urllib.parse import urlsplit

import fsspec

from storage.schemas import TABLES, Table

DEFAULT_ROOT = "./data"
NONE = "none"  # partition value for a key that does not apply (e.g. no describer)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_VALUE = 80


def resolve_root(root: str | None = None) -> str:
    """Flow parameter first, then $WDYS_ROOT, then ./data: any fsspec URL (`s3://bucket/prefix`).
    Local roots, `file://` URLs included, become absolute paths. A root holding a password is
    refused: credentials come from the environment, never from a parameter, a path or a log."""
    root = root or os.environ.get("WDYS_ROOT") or DEFAULT_ROOT
    root = root.removeprefix("file://")
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    elif urlsplit(root).password is not None:
        raise ValueError(
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
        raise ValueError(
            f"storage root {root!r}: unknown or unavailable protocol {protocol!r} ({exc})"
        ) from exc
    if not rest.strip("/"):
        raise ValueError(f"storage root {root!r} names no bucket or path")


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def partition_value(value: object) -> str:
    """A path-safe rendering of a key value: model ids like 'open_clip:ViT-B-32/openai' become
    'open_clip_ViT-B-32_openai'; overly long values (local checkpoint paths) keep a hash suffix."""
    text = _UNSAFE.sub("_", str(value)).strip("_") or NONE
    if len(text) > _MAX_VALUE:
        digest = hashlib.sha256(str(value).encode()).hexdigest()[:10]
        text = f"{text[: _MAX_VALUE - 11]}_{digest}"
    return text


def partition_dir(root: str, table: str | Table, keys: Mapping[str, object]) -> str:
    spec = TABLES[table] if isinstance(table, str) else table
    missing = set(spec.partition_keys) - set(keys)
    extra = set(keys) - set(spec.partition_keys)
    if missing or extra:
        raise ValueError(f"table {spec.name}: missing keys {sorted(missing)}, unexpected {sorted(extra)}")
    parts = [f"{k}={partition_value(keys[k])}" for k in spec.partition_keys]
    return "/".join([root, spec.name, *parts, f"v={spec.version}"])


def shard_path(root: str, table: str | Table, keys: Mapping[str, object], shard: int) -> str:
    return f"{partition_dir(root, table, keys)}/shard-{shard:05d}.parquet"


def pending_path(path: str) -> str:
    """Where the final answers of a shard that still has transiently failed items wait for those
    items: hidden (a leading '.'), so no table glob or view ever reads it as a result."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name.removesuffix('.parquet')}.pending.parquet"


def table_glob(root: str, table: str) -> str:
    """Every shard of a table; temp files start with '.' so a glob never sees a half-written one."""
    depth = len(TABLES[table].partition_keys) + 1
    return "/".join([root, table, *(["*"] * depth), "*.parquet"])


def catalog_path(root: str) -> str:
    return f"{root}/wdys.duckdb"
