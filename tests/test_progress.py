"""Progress of a run: the per-stage counting, rate and ETA, the throttling of lines, and a real run on
a torchvision-layout ImageFolder with a broken file: progress lines and artifacts, a cached rerun that
says so, the `errors` view naming the broken file and the `keys` view mapping slugs back."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sources.benchmarks import EMBEDDED_DATASETS
from tasks import progress
from tasks.cache import ShardResult
from tasks.progress import RunProgress, StageName, stage_of

N = 8


@dataclass
class FakeFuture:
    task_run_id: uuid.UUID


def tracker(interval: float) -> tuple[RunProgress, list[str]]:
    lines: list[str] = []

    class Log:
        def info(self, message: str) -> None:
            lines.append(message)

    return RunProgress(Log(), interval), lines  # type: ignore[arg-type]


def submit(t: RunProgress, stage: StageName | None, rows: int | None) -> FakeFuture:
    future = FakeFuture(uuid.uuid4())
    t.expect(future, stage, rows or 0)  # type: ignore[arg-type]
    return future


def test_rate_and_eta_start_at_the_first_computed_shard(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    t, lines = tracker(interval=0)
    futures = [submit(t, "describe", 10) for _ in range(5)]
    submit(t, None, None)  # a task no stage tracks (plan)
    assert set(t.stages) == {"describe"} and (t.stages["describe"].shards, t.stages["describe"].images) == (
        5,
        50,
    )
    for i, future in enumerate(futures[:3]):
        now[0] = 110.0 + 10 * i
        t.finished(future, ShardResult("p", computed=True))
    assert lines[0] == "describe: 1/5 shards (10/50 images), ETA ?"
    # 20 images in the 20 s after the first shard: 1 image/s, 20 images left
    assert lines[2] == "describe: 3/5 shards (30/50 images), 1.00 images/s, ETA 0:00:20"
    t.finished(futures[3], ShardResult("p", computed=False))
    t.finished(futures[4], None, failed=True)
    assert (
        lines[-1]
        == "describe: done in 0:00:30, 5/5 shards (50/50 images), 1 from cache, 1 failed, 1.00 images/s"
    )


def test_lines_are_throttled_but_the_end_of_a_stage_is_always_said(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    t, lines = tracker(interval=5)
    futures = [submit(t, "class weights", None) for _ in range(10)]
    for i, future in enumerate(futures):
        now[0] = float(i)
        t.finished(future, ShardResult("p", computed=True))
    assert [line.split(",")[0] for line in lines] == [
        "class weights: 1/10 shards",
        "class weights: 6/10 shards",
        "class weights: done in 0:00:09",
    ]
    assert "ETA 0:00:04" in lines[1]  # 5 shards in 5 s after the first, 4 left


def test_a_stage_read_from_the_cache_says_so():
    t, lines = tracker(interval=60)
    futures = [submit(t, "embed", 8), submit(t, "embed", 8)]
    for future in futures:
        t.finished(future, ShardResult("p", computed=False))
    assert lines == [
        "embed: 1/2 shards (8/16 images), 1 from cache",
        "embed: cached, all 2 shards read from the cache (16/16 images)",
    ]


def test_each_shard_task_declares_its_stage():
    from tasks.answers import for_describer
    from tasks.class_weights import class_weights_task, describe_classes
    from tasks.classify import classify_shard
    from tasks.describe import describe_shard, guess_shard
    from tasks.embed import embed_images_shard, embed_texts_shard
    from tasks.ingest import ingest_shard
    from tasks.plan import plan_dataset

    declared = {
        ingest_shard: "ingest",
        describe_shard: "describe",
        guess_shard: "describe",
        for_describer(guess_shard, "openai:served"): "describe",  # a copy without the gpu tag
        embed_images_shard: "embed",
        embed_texts_shard: "embed",
        describe_classes: "class weights",
        class_weights_task: "class weights",
        classify_shard: "classify",
        plan_dataset: None,
    }
    assert {t.name: stage_of(t) for t in declared} == {t.name: s for t, s in declared.items()}


def test_clock():
    assert progress.clock(3725.4) == "1:02:05" and progress.clock(-3) == "0:00:00"


def torchvision_folder(root: Path) -> Path:
    """N CIFAR-10 photos as `<class>/<file>.png` (no split folders) and one broken file."""
    table = pq.read_table(EMBEDDED_DATASETS / "cifar10" / "dev.parquet").take(list(range(0, 1000, 1000 // N)))
    table = table.to_pylist()
    names = json.loads((EMBEDDED_DATASETS / "cifar10" / "classes.json").read_text())
    for i, row in enumerate(table):
        folder = root / names[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(row["img"]["bytes"])).save(folder / f"photo{i:03d}.png")
    (root / "cat").mkdir(exist_ok=True)
    (root / "cat" / "a-broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@contextlib.contextmanager
def progress_lines() -> Iterator[list[str]]:
    """The messages of the progress logger (caplog's root handler can be replaced by Prefect's setup)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(progress.LOGGER)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def run_log(flow_run_id: uuid.UUID) -> list[str]:
    """The messages of a flow run's log on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # sends what is queued, and waits
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [log.message for log in logs]


@pytest.mark.slow
def test_a_run_reports_progress_and_names_what_it_filed(prefect_server, tmp_path):
    from prefect.artifacts import Artifact

    from flows.benchmark import benchmark

    photos = torchvision_folder(tmp_path / "photos")
    params = dict(
        datasets=[f"imagefolder:{photos}"],
        splits=["test"],
        root=str(tmp_path / "root"),
        shard_size=4,
        class_samples=1,
        class_weights=["name"],
    )
    with progress_lines() as lines:
        state = benchmark(**params, return_state=True)
    first = state.result()
    for stage in ("ingest", "describe", "embed", "class weights", "classify"):
        assert any(line.startswith(f"{stage}: done") for line in lines), (stage, lines)
    assert any("imagefolder" in line and "class folders directly under it" in line for line in lines)
    assert any("ETA" in line for line in lines)
    assert any(line.startswith("describe: done") for line in run_log(state.state_details.flow_run_id))
    artifact = Artifact.get("wdys-progress-describe")
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert artifact.type == "progress" and float(data) == 100.0
    dataset = first["metrics"][0]["dataset"]
    assert dataset.startswith("photos-") and all(r["excluded"] == 1 for r in first["metrics"])

    with progress_lines() as cached:
        benchmark(**params)
    assert any(line.startswith("describe: cached, all 6 shards") for line in cached), cached

    with duckdb.connect(str(tmp_path / "root" / "wdys.duckdb"), read_only=True) as con:
        locations = {row[0] for row in con.sql("select distinct location from errors").fetchall()}
        keys = dict(con.sql("select key || '=' || value, raw from keys").fetchall())
        prompts = con.sql("select meaning from keys where key = 'prompts'").fetchall()
        models = con.sql("select role, model_id, backend from models order by role").fetchall()
    assert locations == {str(photos / "cat" / "a-broken.jpg")}
    assert keys[f"dataset={dataset}"] == f"imagefolder:{photos}"
    assert any("What do you see?" in json.loads(m) for (m,) in prompts if m.startswith('"'))
    assert models == [
        ("describer", "offline:lite2-labels", "offline"),
        ("encoder", "offline:conse-lite0-minilm", "offline"),
    ]
