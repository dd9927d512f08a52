"""Crash and resume for real: the benchmark runs in a subprocess, is SIGKILLed in the middle of
describing and again in the middle of embedding, and is rerun. It completes, no partial shard is
ever visible, and its predictions are byte-identical to those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARDS = 8
ARGS = ["--limit", str(4 * SHARDS), "--sample-seed", "5", "--shard-size", "4", "--class-samples", "1",
        "--class-weights", "name", "templates"]  # fmt: skip


@pytest.fixture(scope="module")
def api_env(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}


def launch(root: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.benchmark", *ARGS, "--root", str(root)],
        cwd=REPO, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def shards(root: Path, table: str) -> list[Path]:
    return [p for p in (root / table).rglob("*.parquet") if not p.name.startswith(".")]


class Watcher(threading.Thread):
    """Reads the footer of every shard as soon as it is visible: a partial file would fail."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.seen, self.broken, self.stop = root, set(), [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for path in list(self.root.rglob("*.parquet")) if self.root.exists() else []:
                if path not in self.seen:
                    try:
                        pq.read_metadata(path)
                        self.seen.add(path)
                    except FileNotFoundError:
                        pass  # a temp file renamed away between listing and reading
                    except Exception as exc:  # noqa: BLE001
                        self.broken.append((path, repr(exc)))
                        self.seen.add(path)
            time.sleep(0.02)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL the run's whole process group once `ready()` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return True
        time.sleep(0.02)
    return False


def predictions(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in shards(root, "predictions")}


def test_killed_twice_then_resumed_gives_identical_predictions(api_env, tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, "-m", "flows.benchmark", *ARGS, "--root", str(reference)],
        cwd=REPO, env=api_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    root, log = tmp_path / "crashed", tmp_path / "crashed.log"
    watcher = Watcher(root)
    watcher.start()
    try:
        first = launch(root, api_env, log)
        assert kill_when(first, lambda: 0 < len(shards(root, "descriptions")) < 2 * SHARDS), log.read_text()[
            -2000:
        ]
        assert len(shards(root, "descriptions")) < 2 * SHARDS  # killed in the middle of describing

        second = launch(root, api_env, log)
        assert kill_when(second, lambda: 0 < len(shards(root, "text_embeddings")) < 2 * SHARDS), (
            log.read_text()[-2000:]
        )
        assert not shards(root, "predictions") or len(shards(root, "predictions")) < 2 * SHARDS

        third = launch(root, api_env, log)
        assert third.wait(600) == 0, log.read_text()[-3000:]
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.broken == [] and watcher.seen  # every shard that ever appeared was complete
    assert "shards computed" in log.read_text()
    ours, theirs = predictions(root), predictions(reference)
    assert len(ours) == 2 * SHARDS and ours.keys() == theirs.keys()
    assert all(ours[k] == theirs[k] for k in ours)  # byte-identical Parquet files
