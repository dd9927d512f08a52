"""Places365 from its official archives through torchvision's `Places365` class: downloaded once
from a local HTTP server that stands in for data.csail.mit.edu, unpacked under `$WDYS_DATA_DIR`,
read again without a request.

torchvision pins the archives' URL base and MD5 sums as class attributes; the test points them at
the stand-in and at its tiny archives (the only part not as in production: the real archives are
hundreds of MB and cannot be downloaded here)."""

from __future__ import annotations

import functools
import hashlib
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from torchvision.datasets import Places365
from wds_support import add_member, image_bytes

from sources.benchmarks import BENCHMARKS_BY_NAME, _classnames
from sources.images import decode_manifest
from sources.registry import open_dataset

LABELS = [0, 364, 165]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_archives(folder: Path) -> dict[str, str]:
    """The devkit (categories, val file list) and val_256.tar as the official ones lay them out."""
    folder.mkdir()
    categories = "".join(f"/{n[0]}/{n} {i}\n" for i, n in enumerate(_classnames()["places365"]["raw"]))
    file_list = "".join(f"Places365_val_{i + 1:08d}.jpg {label}\n" for i, label in enumerate(LABELS))
    with tarfile.open(folder / "filelist_places365-standard.tar", "w") as tar:
        add_member(tar, "categories_places365.txt", categories.encode())
        add_member(tar, "places365_val.txt", file_list.encode())
    with tarfile.open(folder / "val_256.tar", "w") as tar:
        for i in range(len(LABELS)):
            add_member(tar, f"val_256/Places365_val_{i + 1:08d}.jpg", image_bytes(i))
    return {
        "categories": hashlib.md5(categories.encode()).hexdigest(),
        "file_list": hashlib.md5(file_list.encode()).hexdigest(),
    }


@pytest.fixture
def archive_server(tmp_path, monkeypatch):
    sums = write_archives(tmp_path / "www")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path / "www"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    www = tmp_path / "www"
    monkeypatch.setattr(Places365, "_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    devkit = {"standard": ("filelist_places365-standard.tar", md5(www / "filelist_places365-standard.tar"))}
    monkeypatch.setattr(Places365, "_DEVKIT_META", devkit)
    monkeypatch.setattr(Places365, "_CATEGORIES_META", ("categories_places365.txt", sums["categories"]))
    monkeypatch.setattr(Places365, "_FILE_LIST_META", {"val": ("places365_val.txt", sums["file_list"])})
    monkeypatch.setattr(Places365, "_IMAGES_META", {("val", True): ("val_256.tar", md5(www / "val_256.tar"))})
    yield requests
    server.shutdown()
    server.server_close()


def test_places365_downloads_its_archives_once_and_reads_them(archive_server, tmp_path, monkeypatch):
    monkeypatch.setenv("WDYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WDYS_SHARED_DATASETS", str(tmp_path / "no-shared-copy"))
    monkeypatch.delenv("WDYS_PLACES365_DIR", raising=False)
    monkeypatch.delenv("WDYS_PLACES365_HUB", raising=False)
    source = open_dataset("places365", "val")
    names = BENCHMARKS_BY_NAME["places365"].class_names
    manifest = source.manifest([0, 1, 2])
    assert [names[i] for i in manifest.column("label").to_pylist()] == [names[i] for i in LABELS]
    assert decode_manifest(manifest)[1] == [None, None, None]
    assert manifest.column("uri")[0].as_py().startswith(str(tmp_path / "data" / "places365" / "torchvision"))
    assert source.num_rows == 3 and source.expected_rows == 36_500
    # torchvision probes each URL for a redirect with a GET, then downloads it
    assert sorted(set(archive_server)) == ["/filelist_places365-standard.tar", "/val_256.tar"]
    asked = len(archive_server)
    again = open_dataset("places365", "test")  # `test` names the evaluation split: no new download
    assert again.num_rows == 3 and len(archive_server) == asked
