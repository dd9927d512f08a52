"""Content hashes of local model files: a model that lives at a path is keyed by what is there, so
that retraining or editing it in place is a new key (an `hf:` folder, an open_clip checkpoint file
or `local-dir:` folder)."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


@functools.cache
def _hash_files(root: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(root, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _stamp(root: Path, files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    return tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def dir_content_hash(path: Path) -> str:
    """sha256 over the names and contents of every file (config, weights, processor, chat template);
    computed once per process while no file's size or mtime changes."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
    return "sha256:" + _hash_files(str(path), _stamp(path, files))


def content_hash(path: Path) -> str:
    """A folder's `dir_content_hash`, or a file's (its name counts, not its folder)."""
    if path.is_dir():
        return dir_content_hash(path)
    return "sha256:" + _hash_files(str(path.parent), _stamp(path.parent, [path]))
