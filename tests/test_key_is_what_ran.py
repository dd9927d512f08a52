"""The key is what ran: a describer task answers with the settings the flow's machine put in the key
(revision, dtype, endpoint), or refuses to store anything when its worker would answer otherwise; a
long-lived process sees a revision that changed on disk. Real tiny VLM, real local chat server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_chat_server import FakeChatServer, serving
from tiny_vlms import build

from backends import registry
from backends.base import DescriberUnavailable
from backends.hf_spec import settings_for
from storage.addresses import answers_shard
from storage.io import exists
from storage.keys import Selection
from tasks.describe import answer_source, describe_shard
from tasks.ingest import ingest_shard
from tasks.plan import Shard

REVISION, NEWER = "1" * 40, "2" * 40
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llava", tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def a_shard(root: str) -> Shard:
    """The first four images of CIFAR-10 `dev` (shipped with the code), ingested."""
    shard = Shard(Selection("cifar10", "dev", 4, None, 4), 0, (0, 1, 2, 3), NAMES)
    ingest_shard.fn(root, shard)
    return shard


def refused(call: object) -> str:
    with pytest.raises(DescriberUnavailable) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_revision_that_changes_on_disk_is_seen(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A download that moves `refs/main` between two runs of one long-lived process is a new key."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hub" / "models--tiny-org--moving"
    for revision in (REVISION, NEWER):
        shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    assert settings_for("tiny-org/moving", 4)["revision"] == REVISION

    (repo / "refs" / "main").write_text(NEWER)

    assert settings_for("tiny-org/moving", 4)["revision"] == NEWER


def test_hf_worker_loads_the_keys_revision(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The worker answers at the revision the flow resolved, whatever its own cache says now."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hub" / "models--tiny-org--pinned-by-key"
    for revision in (REVISION, NEWER):
        shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    source = answer_source("hf:tiny-org/pinned-by-key", 4, 1, None)
    (repo / "refs" / "main").write_text(NEWER)  # the model changed on disk after the flow resolved it

    describer = registry.load_describer(source.describer, 4, source.settings)

    assert describer.settings()["revision"] == REVISION


def test_hf_worker_with_another_dtype_stores_nothing(model_dir: Path, tmp_path: Path) -> None:
    """A GPU flow host keys bf16 answers; this CPU worker would answer in float32: it refuses."""
    root = str(tmp_path)
    shard = a_shard(root)
    source = answer_source(f"hf:{model_dir}", 4, 1, None)
    on_gpu = json.dumps({**json.loads(source.settings), "dtype": "bfloat16"}, sort_keys=True)
    source = type(source)(source.describer, on_gpu, 4, 1, None)

    message = refused(lambda: describe_shard.fn(root, shard, source))

    assert "dtype" in message and "bfloat16" in message and "float32" in message
    assert not exists(answers_shard(root, shard.selection, NAMES, source, "description", 0))


def test_openai_worker_with_another_endpoint_stores_nothing(tmp_path: Path, monkeypatch) -> None:
    """The flow's machine keyed the answers on one endpoint; a worker whose OPENAI_BASE_URL names
    another refuses before sending a request."""
    root = str(tmp_path)
    shard = a_shard(root)
    with serving(monkeypatch) as keyed:
        source = answer_source("openai:test-vlm-endpoint", 8, 1, None)
        with serving(monkeypatch) as other:
            assert isinstance(other, FakeChatServer) and other.base_url != keyed.base_url

            message = refused(lambda: describe_shard.fn(root, shard, source))

            assert "endpoint" in message and not other.requests and not keyed.requests
    assert not exists(answers_shard(root, shard.selection, NAMES, source, "description", 0))
