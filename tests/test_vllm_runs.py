"""Runs with `vllm:` describers against the stand-in `vllm` executable (fakes/vllm, a real process on
127.0.0.1): one server per model, shared by the shards and stopped at the end; none left behind by a
SIGKILLed run; a server dying mid-run stores nothing as an error, and the rerun asks only what is
missing."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from vllm_support import alive, answered, started, use_fake_vllm

from backends import registry, vllm_server
from flows.benchmark import benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    yield from use_fake_vllm(monkeypatch, tmp_path)


def dataset(folder: Path, n: int) -> str:
    """A two-class Parquet split whose images the stand-in tells apart by their width."""
    rows = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (40 + i, 32), (120, 80, 40)).save(buffer, format="JPEG")
        rows.append({"bytes": buffer.getvalue(), "path": f"{i}.jpg"})
    table = pa.table({"img": rows, "label": pa.array([i % 2 for i in range(n)], pa.int64())})
    meta = {"info": {"features": {"label": {"names": ["cat", "dog"]}}}}
    folder.mkdir()
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), folder / "test.parquet")
    return f"parquet:{folder}"


def run_of(tmp_path: Path, describers: list[str], n: int = 12, shard_size: int = 4) -> dict:
    data = tmp_path / "data"
    source = f"parquet:{data}" if data.exists() else dataset(data, n)
    return dict(
        datasets=[source], splits=["test"], describers=describers, class_weights=["name"],
        root=str(tmp_path / "root"), shard_size=shard_size,
    )  # fmt: skip


def stored_answers(root: Path) -> list[dict]:
    shards = sorted(root.glob("descriptions/**/shard-*.parquet"))
    return [r for s in shards for r in pq.read_table(s).to_pylist()]


def pending_answers(root: Path) -> list[dict]:
    """Answers kept aside by a failed shard (none on main yet for a describer-wide failure: issue 23)."""
    files = sorted(root.rglob(".*.pending.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist() if r["text"] is not None]


def error_rows(root: Path) -> list[dict]:
    return [r for r in stored_answers(root) if r["error"] is not None]


def test_a_run_starts_one_server_per_model_shares_it_and_stops_it(prefect_server, fake_vllm, tmp_path):
    result = benchmark(**run_of(tmp_path, ["vllm:org/model-a", "vllm:org/model-b"]))

    servers = started(fake_vllm)
    assert sorted(s["model"] for s in servers) == ["org/model-a", "org/model-b"]  # 3 shards each
    assert result["shards_computed"] > 0 and len(answered(fake_vllm)) == 2 * 2 * 12
    assert not any(alive(s["pid"]) for s in servers) and vllm_server.running() == {}
    assert error_rows(tmp_path / "root") == []
    logs = sorted(p.name for p in Path(result["report"]).glob("vllm-*.log"))  # kept beside the report
    assert logs == ["vllm-org_model-a.log", "vllm-org_model-b.log"]


def test_a_server_dying_mid_run_stores_no_error_and_the_rerun_asks_only_whats_missing(
    prefect_server, fake_vllm, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_VLLM_DIE_AFTER", "10")
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "1")
    run = run_of(tmp_path, ["vllm:org/dies"], n=12, shard_size=4)
    with pytest.raises(Exception, match=r"exited mid-run \(status 3\)"):
        benchmark(**run)
    assert len(answered(fake_vllm)) == 10 and error_rows(tmp_path / "root") == []
    kept = len(stored_answers(tmp_path / "root")) + len(pending_answers(tmp_path / "root"))
    assert vllm_server.running() == {}

    monkeypatch.delenv("FAKE_VLLM_DIE_AFTER")
    registry._load_describer.cache_clear()  # a rerun is a new process: no describer loaded yet
    benchmark(**run)

    asked = answered(fake_vllm)
    assert len(asked) - 10 == 2 * 12 - kept  # the rerun asked only what was not kept
    assert len(stored_answers(tmp_path / "root")) == 2 * 12
    assert len(started(fake_vllm)) == 2 and error_rows(tmp_path / "root") == []


def test_no_server_survives_a_sigkilled_run(prefect_server, fake_vllm, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "FAKE_VLLM_DELAY_S": "0.5"}
    command = [sys.executable, "-m", "flows.benchmark", "--describers", "vllm:org/killed", "--limit", "16"]
    command += ["--shard-size", "4", "--class-weights", "name", "--root", str(tmp_path / "root")]
    with (tmp_path / "run.log").open("w") as log:
        run = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 240
    while not answered(fake_vllm) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    (server,) = started(fake_vllm)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its process group; the server has a session of its own
    run.wait(30)
    deadline = time.monotonic() + 20
    while alive(server["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server["pid"])


def test_a_failed_start_fails_the_command_line_run_in_one_line(prefect_server, fake_vllm, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "FAKE_VLLM_FAIL_START": "unknown flag --bad",
    }
    command = [sys.executable, "-m", "flows.benchmark", "--describers", "vllm:org/bad-flags", "--limit", "4"]
    command += ["--class-weights", "name", "--root", str(tmp_path / "root")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "exited with status 1 before it was ready" in errors[0]
    assert "RuntimeError: unknown flag --bad" in errors[0] and str(tmp_path / "logs") in errors[0]
    assert 'File "' not in done.stderr  # no traceback of the run's own (the server's is quoted, one line)
    assert error_rows(tmp_path / "root") == [] and not any(alive(s["pid"]) for s in started(fake_vllm))


def test_the_paper_deployments_pick_the_engine_on_the_machine_that_runs_them(
    prefect_server, fake_vllm, tmp_path, monkeypatch
):
    from deployments.deploy import PAPER, PAPER_ABOUT
    from fakes.tiny_vlms import build
    from storage.paths import partition_value

    assert PAPER["describers"] == ["hf:Qwen/Qwen2-VL-7B-Instruct"] and PAPER["vllm_where_available"]
    assert "where the worker running the flow has it" in PAPER_ABOUT  # not where it was deployed
    model = build("llava", tmp_path / "vlm")  # a real VLM for the machine without vLLM
    parameters = {**run_of(tmp_path, [f"hf:{model}"]), "vllm_where_available": True}

    with_vllm = benchmark(**parameters)
    monkeypatch.setenv("WDYS_VLLM", str(tmp_path / "no-vllm"))  # a worker without vLLM
    without = benchmark(**parameters)

    assert {r["describer"] for r in with_vllm["metrics"]} == {partition_value(f"vllm:{model}")}
    assert [s["model"] for s in started(fake_vllm)] == [str(model)]
    assert {r["describer"] for r in without["metrics"]} == {partition_value(f"hf:{model}")}
    assert without["shards_computed"] > 0 and len(answered(fake_vllm)) == 2 * 12  # hf: asked no server
