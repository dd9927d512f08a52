"""The key is what ran: a describer task answers with the settings the flow's machine put in the key
(revision, dtype, endpoint), or refuses to store anything when its worker would answer otherwise; a
long-lived process sees a revision that changed on disk. Real tiny VLM, real local chat server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import test_backend_hf_failures as hf_failures

from backends import registry
from backends.base import DescriberUnavailable
from backends.hf_spec import settings_for
from fakes.chat_server import FakeChatServer, serving
from storage.addresses import answers_shard
from storage.io import exists
from storage.keys import Selection
from tasks.cache import ShardResult
from tasks.describe import answerer_for, describe_shard
from tasks.ingest import ingest_shard
from tasks.plan import Shard

REVISION, NEWER = "1" * 40, "2" * 40
model_dir, on_cpu = hf_failures.model_dir, hf_failures.on_cpu  # the tiny VLM; on the CPU, offline
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def a_shard(root: str) -> tuple[Shard, ShardResult]:
    """The first four images of CIFAR-10 `dev` (shipped with the code), ingested: it and its manifest."""
    shard = Shard(Selection("cifar10", "dev", 4, None, 4), 0, (0, 1, 2, 3), NAMES)
    return shard, ingest_shard.fn(root, shard)


def two_revisions(model_dir: Path, home: Path, repo: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private offline hub cache holding `repo` at two commits, `main` at the first; its ref file."""
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    for revision in (REVISION, NEWER):
        shutil.copytree(model_dir, folder / "snapshots" / revision)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    return folder / "refs" / "main"


def refused(call: object) -> str:
    with pytest.raises(DescriberUnavailable) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_revision_that_changes_on_disk_is_seen(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A download that moves `refs/main` between two runs of one long-lived process is a new key."""
    main = two_revisions(model_dir, tmp_path, "tiny-org/moving", monkeypatch)
    assert settings_for("tiny-org/moving", 4)["revision"] == REVISION

    main.write_text(NEWER)

    assert settings_for("tiny-org/moving", 4)["revision"] == NEWER


def test_hf_worker_loads_the_keys_revision(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The worker answers at the revision the flow resolved, whatever its own cache says now."""
    main = two_revisions(model_dir, tmp_path, "tiny-org/pinned-by-key", monkeypatch)
    answerer = answerer_for("hf:tiny-org/pinned-by-key", 4, 1, None)
    main.write_text(NEWER)  # the model changed on disk after the flow resolved it

    describer = registry.load_describer(answerer.describer, 4, answerer.settings)

    assert describer.settings()["revision"] == REVISION


def test_hf_worker_with_another_dtype_stores_nothing(model_dir: Path, tmp_path: Path) -> None:
    """A GPU flow host keys bf16 answers; this CPU worker would answer in float32: it refuses."""
    root = str(tmp_path)
    shard, manifest = a_shard(root)
    answerer = answerer_for(f"hf:{model_dir}", 4, 1, None)
    on_gpu = json.dumps({**json.loads(answerer.settings), "dtype": "bfloat16"}, sort_keys=True)
    answerer = type(answerer)(answerer.describer, on_gpu, 4, 1, None)

    message = refused(lambda: describe_shard.fn(root, shard, answerer, manifest))

    assert "dtype" in message and "bfloat16" in message and "float32" in message
    assert not exists(answers_shard(root, shard.selection, NAMES, answerer, "description", 0))


def test_openai_worker_with_another_endpoint_stores_nothing(tmp_path: Path, monkeypatch) -> None:
    """The flow's machine keyed the answers on one endpoint; a worker whose OPENAI_BASE_URL names
    another refuses before sending a request."""
    root = str(tmp_path)
    shard, manifest = a_shard(root)
    with serving(monkeypatch) as keyed:
        answerer = answerer_for("openai:test-vlm-endpoint", 8, 1, None)
        with serving(monkeypatch) as other:
            assert isinstance(other, FakeChatServer) and other.base_url != keyed.base_url

            message = refused(lambda: describe_shard.fn(root, shard, answerer, manifest))

            assert "endpoint" in message and not other.requests and not keyed.requests
    assert not exists(answers_shard(root, shard.selection, NAMES, answerer, "description", 0))
