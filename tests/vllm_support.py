"""What the `vllm:` tests share: the stand-in `vllm` executable (fakes/vllm) in the environment, and
what it recorded (the servers it started, the answers it sent)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import registry, vllm_server

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "fakes" / "vllm"


def use_fake_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """WDYS_VLLM at the stand-in (run by this interpreter), its logs and records in tmp_path; every
    server stopped and no describer cached afterwards. Yields the record file."""
    monkeypatch.setenv("WDYS_VLLM", str(FAKE))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("WDYS_VLLM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(tmp_path / "started.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WDYS_VLLM_ARGS", raising=False)
    yield tmp_path / "started.jsonl"
    vllm_server.stop_all()
    registry._load_describer.cache_clear()
    vllm_server._version_of.cache_clear()  # a test's FAKE_VLLM_VERSION must not outlive it


def _records(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def started(record: Path) -> list[dict]:
    """The servers the stand-in started: pid, model, argv."""
    return [r for r in _records(record) if "model" in r]


def answered(record: Path) -> list[str]:
    """What each answer the stand-in sent was asked (prompt, image size, seed)."""
    return [r["answered"] for r in _records(record) if "answered" in r]


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ")[-1][:1] != "Z"
