"""What an `hf:` model id names, and the settings it implies (the cache key), without loading it.

`hf:org/repo@rev` pins a revision; `hf:org/repo` is keyed by the commit its `main` points to (asked
of the hub when online, else read from the local HF cache, else "unresolved"), resolved on the
flow's machine and loaded at that commit by every task; a local dir is keyed by a content hash of
its files, so that retraining or editing a model in place is a new key.
"""

from __future__ import annotations

from pathlib import Path

from backends.base import DescriberUnavailable
from backends.content import dir_content_hash
from backends.device import pick_device, pick_dtype
from core.settings import HF_BATCH_SIZE, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_RESIDENT, TRUST_REMOTE_CODE

CLASS_TEMPERATURE = 0.99  # CuPL samples class descriptions at a high temperature for variety
DEFAULT_BATCH_SIZE = 8
AUTO_BATCH_START = 64  # where the automatic batch size starts halving
UNRESOLVED = "unresolved"


def is_local(spec: str) -> bool:
    """Hub ids are `org/name`; anything that starts like a filesystem path is meant as a local dir."""
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(repo id or dir, revision): `org/repo@rev` pins a revision; a local path is taken whole."""
    if is_local(spec):
        return spec, None
    name, sep, revision = spec.rpartition("@")
    return (name, revision) if sep and name and revision else (spec, None)


def model_name(spec: str) -> str:
    """The repo id, or the dir's own name: stable across machines, unlike an absolute path."""
    name, _ = parse_spec(spec)
    return Path(name).expanduser().name if is_local(name) else name


def trust_remote_code() -> bool:
    """Models whose code lives in their repo run it only when the user opts in."""
    return TRUST_REMOTE_CODE.flag()


def batch_size() -> int | None:
    """Images (or class-description samples) per `generate()`: WDYS_HF_BATCH_SIZE, a number, or
    `auto` (None): the largest batch that fits, found once per model and device by halving from
    `AUTO_BATCH_START` on out-of-memory. Default: `auto` on CUDA, 8 elsewhere (a CPU does not run
    out of memory gracefully, and batching gains little there)."""
    raw = HF_BATCH_SIZE.text().lower()
    if not raw:
        return None if pick_device().type == "cuda" else DEFAULT_BATCH_SIZE
    if raw == "auto":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise DescriberUnavailable(f"WDYS_HF_BATCH_SIZE must be a positive integer or 'auto', not {raw!r}")
    return int(raw)


def resident_limit() -> int:
    """VLMs kept loaded per device at once (WDYS_HF_RESIDENT, default 1; 0: no limit): loading one
    more releases the least recently used one first."""
    raw = HF_RESIDENT.text()
    if not raw:
        return 1
    if not raw.isdigit():
        raise DescriberUnavailable(f"WDYS_HF_RESIDENT must be a non-negative integer, not {raw!r}")
    return int(raw)


def _offline() -> bool:
    return HF_HUB_OFFLINE.flag()


def hub_cache() -> Path:
    """HF_HUB_CACHE or HF_HOME/hub as the environment says now (huggingface_hub reads it at import)."""
    if HF_HUB_CACHE.text():
        return Path(HF_HUB_CACHE.text())
    if HF_HOME.text():
        return Path(HF_HOME.text()) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _resolve(repo: str, cache: Path, offline: bool) -> str:
    """Asked again at every call (once per describer and run, on the flow's machine), so that a
    long-lived process sees a download that moved `main`; the run's tasks load the revision its key
    names, so a download during the run cannot change what they answer with."""
    if not offline:
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo, revision="main", timeout=10).sha
            if sha:
                return sha
        except Exception:  # no network, or a private repo: the local cache may still know
            pass
    ref = cache / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else UNRESOLVED


def resolve_revision(repo: str) -> str:
    """The commit `main` of a hub repo points to; never asks the network when HF_HUB_OFFLINE=1."""
    return _resolve(repo, hub_cache(), _offline())


def settings_for(spec: str, max_new_tokens: int, revision: str | None = None) -> dict[str, object]:
    """Everything the answers depend on, without loading the model: it becomes the cache key.
    `revision`: the hub commit a run's key already names (a worker loads that one, not what `main`
    points to now); a local dir's content is hashed again whatever the key says."""
    name, pinned = parse_spec(spec)
    if is_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise DescriberUnavailable(f"hf describer: model dir {name!r} does not exist; check the model id")
        revision = dir_content_hash(path)
    else:
        revision = pinned or revision or resolve_revision(name)
    batch_size()  # a bad setting fails here, before any shard
    settings: dict[str, object] = {
        "backend": "hf",
        "model": model_name(name),
        "revision": revision,
        "dtype": str(pick_dtype(pick_device())).removeprefix("torch."),
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "class_temperature": CLASS_TEMPERATURE,
    }
    if trust_remote_code():
        settings["trust_remote_code"] = True
    return settings
