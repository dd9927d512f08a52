"""Small datasets in CLIP_benchmark's WebDataset layout and the hub stand-in as a fixture."""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
from fake_hub import FakeHub
from huggingface_hub import HfFileSystem
from PIL import Image


def image_bytes(index: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), (37 * index % 256, 90, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds(
    root: Path,
    split: str,
    labels: Sequence[int],
    classnames: Sequence[str] | None,
    shards: int = 2,
    nshards_file: bool = True,
    templates: Sequence[str] = ("a photo of a {c}.",),
    broken: Sequence[int] = (),
) -> None:
    """`labels[i]` is sample i's class; samples are dealt to shards in order (0.tar gets the first
    ones); a sample in `broken` gets bytes that are no image."""
    (root / split).mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(labels) // shards)
    exts = ("jpg", "png", "webp")
    for shard in range(shards):
        with tarfile.open(root / split / f"{shard}.tar", "w") as tar:
            for i in range(shard * per_shard, min(len(labels), (shard + 1) * per_shard)):
                ext = exts[i % len(exts)]
                fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
                data = b"not an image" if i in broken else image_bytes(i, fmt)
                add_member(tar, f"s{i:07d}.{ext}", data)
                add_member(tar, f"s{i:07d}.cls", f"{labels[i]}\n".encode())
    if nshards_file:
        (root / split / "nshards.txt").write_text(f"{shards}\n")
    if classnames is not None:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")


def serve_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The hub stand-in, with huggingface_hub pointed at it (it reads HF_ENDPOINT at import into two
    constants, the endpoint and the download URL template, so those are set too; subprocesses get
    the variable). Test modules wrap it in a fixture."""
    hub = FakeHub()
    cache = tempfile.mkdtemp(prefix="wdys-hub-cache-")  # the byte cache (sources.remote), per test
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    HfFileSystem.clear_instance_cache()
    yield hub
    HfFileSystem.clear_instance_cache()
    hub.close()
    shutil.rmtree(cache, ignore_errors=True)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def serve_places365_archives(
    www: Path, labels: Sequence[int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    """A stand-in for data.csail.mit.edu serving Places365's devkit (categories, val file list) and
    `val_256.tar` as the official archives lay them out, one image per label. torchvision pins the
    URL base and the archives' MD5 sums as class attributes: they are pointed at the stand-in and
    its tiny archives (the real ones are hundreds of MB and cannot be fetched here). Yields the
    paths asked for with GET."""
    from torchvision.datasets import Places365

    from sources.benchmarks import _classnames

    www.mkdir(parents=True)
    categories = "".join(f"/{n[0]}/{n} {i}\n" for i, n in enumerate(_classnames()["places365"]["raw"]))
    file_list = "".join(f"Places365_val_{i + 1:08d}.jpg {label}\n" for i, label in enumerate(labels))
    with tarfile.open(www / "filelist_places365-standard.tar", "w") as tar:
        add_member(tar, "categories_places365.txt", categories.encode())
        add_member(tar, "places365_val.txt", file_list.encode())
    with tarfile.open(www / "val_256.tar", "w") as tar:
        for i in range(len(labels)):
            add_member(tar, f"val_256/Places365_val_{i + 1:08d}.jpg", image_bytes(i))
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    devkit = ("filelist_places365-standard.tar", md5((www / "filelist_places365-standard.tar").read_bytes()))
    monkeypatch.setattr(Places365, "_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setattr(Places365, "_DEVKIT_META", {"standard": devkit})
    monkeypatch.setattr(Places365, "_CATEGORIES_META", ("categories_places365.txt", md5(categories.encode())))
    monkeypatch.setattr(Places365, "_FILE_LIST_META", {"val": ("places365_val.txt", md5(file_list.encode()))})
    images = ("val_256.tar", md5((www / "val_256.tar").read_bytes()))
    monkeypatch.setattr(Places365, "_IMAGES_META", {("val", True): images})
    yield requests
    server.shutdown()
    server.server_close()


def isolate_benchmarks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shared copy, no data dir, no per-benchmark override unless a test sets them."""
    from sources.benchmarks import BENCHMARKS_BY_NAME

    monkeypatch.setenv("WDYS_SHARED_DATASETS", str(tmp_path / "no-shared-copy"))
    monkeypatch.delenv("WDYS_DATA_DIR", raising=False)
    for bench in BENCHMARKS_BY_NAME.values():
        monkeypatch.delenv(f"{bench.env_prefix}_DIR", raising=False)
        monkeypatch.delenv(f"{bench.env_prefix}_HUB", raising=False)
