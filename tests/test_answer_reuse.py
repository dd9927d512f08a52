"""Every answer asked once: an answer, like an embedding, is keyed by the image, not by the row
selection. A run that selects an image another selection of the split already answered (a `--limit`
trial, a seeded sample, another shard size) takes its stored rows byte for byte and asks only the
images never answered. Real local OpenAI-compatible server (fakes/chat_server.py, which records every
request), real Parquet shards, real Prefect flow runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from runs import assert_same_metrics

from fakes.chat_server import FakeChatServer, serving
from flows.benchmark import benchmark
from storage.addresses import answers_shard, image_embeddings_shard, manifest_shard
from storage.keys import Selection
from tasks.describe import answerer_for, describe_shard
from tasks.embed import embed_images_shard
from tasks.ingest import ingest_shard
from tasks.plan import Shard

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ENCODER = "offline:conse-lite0-minilm"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    with serving(monkeypatch) as srv:
        yield srv


def image_requests(server: FakeChatServer) -> int:
    return sum(r["size"] is not None for r in server.requests)


def shard_of(limit: int | None, shard_size: int, index: int, rows: range) -> Shard:
    return Shard(Selection("cifar10", "dev", limit, None, shard_size), index, tuple(rows), NAMES)


def test_a_shard_takes_the_rows_another_selection_stored_and_asks_only_the_rest(
    server: FakeChatServer, tmp_path: Path
) -> None:
    root = str(tmp_path)
    answerer = answerer_for("openai:reuse", 77, 1, None)
    trial = shard_of(6, 4, 1, range(4, 6))  # the trial's second shard: images 4 and 5
    bigger = shard_of(8, 8, 0, range(8))  # another limit and shard size: images 0 to 7

    done = describe_shard.fn(root, trial, answerer, ingest_shard.fn(root, trial))
    embed_images_shard.fn(root, trial, ENCODER, ingest_shard.fn(root, trial))
    assert done.computed and image_requests(server) == 2

    manifest = ingest_shard.fn(root, bigger)
    result = describe_shard.fn(root, bigger, answerer, manifest)
    images = embed_images_shard.fn(root, bigger, ENCODER, manifest)

    assert result.computed and image_requests(server) == 2 + 6  # images 4 and 5 were not asked again
    asked = [r["size"] for r in server.requests]
    assert len(asked) == 8
    stored, reused = (pq.read_table(p).to_pylist() for p in (result.path, done.path))
    assert [r["image_id"] for r in stored] == [f"dev/{i:07d}" for i in range(8)]  # its own selection
    assert stored[4:6] == reused  # byte for byte, latency and tokens included
    mine = pq.read_table(images.path)
    theirs = pq.read_table(image_embeddings_shard(root, trial.selection, ENCODER, 1))
    assert mine.slice(4, 2).equals(theirs.replace_schema_metadata(None).cast(mine.schema))
    assert images.forward_passes > 0  # the six other images were embedded
    for path in (manifest_shard(root, bigger.selection, 0), result.path):
        assert "subset=first8-shard8" in path
    assert answers_shard(root, trial.selection, NAMES, answerer, "description", 1) == done.path


def test_a_trial_then_the_full_split_asks_only_the_new_images(
    prefect_server: None, server: FakeChatServer, tmp_path: Path
) -> None:
    """The acceptance run: `--limit 200`, then the full 1,000-image split on the same root, asks
    1,600 image answers (800 new images, a description and a guess each), not 2,000; its metrics
    are those of a fresh full run on another root, and each run's `manifest` lists its own images."""
    run = {"describers": ["openai:reuse-e2e"], "encoders": [ENCODER], "class_weights": ["name"]}
    run["class_samples"] = 1
    root, fresh = str(tmp_path / "root"), str(tmp_path / "fresh")

    benchmark(**run, root=root, limit=200)
    trial = image_requests(server)
    full = benchmark(**run, root=root)
    second = image_requests(server) - trial
    baseline = benchmark(**run, root=fresh)

    assert (trial, second) == (400, 1600)
    assert image_requests(server) - trial - second == 2000  # the fresh root asked everything
    assert_same_metrics(full["metrics"], baseline["metrics"], rows=len(baseline["metrics"]))
    with duckdb.connect(str(tmp_path / "root" / "wdys.duckdb"), read_only=True) as con:
        counts = dict(con.sql("select subset, count(*) from manifest group by subset").fetchall())
    assert counts == {"first200-shard256": 200, "all-shard256": 1000}
