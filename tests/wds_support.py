"""Small datasets in CLIP_benchmark's WebDataset layout and the hub stand-in as a fixture."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence
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
