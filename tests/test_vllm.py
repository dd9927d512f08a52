"""`vllm:` describers against the stand-in `vllm` executable (fakes/vllm, a real process serving the
chat API on 127.0.0.1): the key, the server's start (failed, slow, timed out), its reuse and its stop."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from vllm_support import FAKE, alive, started, use_fake_vllm

from backends import registry, vllm_server
from backends.base import DescriberUnavailable
from backends.vllm_describer import VLLMDescriber
from core.errors import UserError
from core.guard import guarded


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    yield from use_fake_vllm(monkeypatch, tmp_path)


def test_key_holds_the_vllm_version_and_answer_changing_flags(fake_vllm, monkeypatch):
    base = registry.describer_settings("vllm:org/model-a")
    assert base["backend"] == "vllm" and base["vllm_version"] == "0.0.0+fake"
    assert base["model"] == "org/model-a" and "127.0.0.1" not in json.dumps(base)  # no port in the key

    monkeypatch.setenv("FAKE_VLLM_VERSION", "0.11.0")
    os.utime(FAKE)  # a changed executable is asked again (the version is cached per executable)
    newer = registry.describer_settings("vllm:org/model-a")
    assert newer["vllm_version"] == "0.11.0" and newer != base

    monkeypatch.setenv("WDYS_VLLM_ARGS", "--dtype float16 --max-num-seqs 64 --seed=3 --enforce-eager")
    flagged = registry.describer_settings("vllm:org/model-a")
    assert flagged["server_flags"] == {"dtype": "float16", "seed": "3", "enforce-eager": "true"}
    monkeypatch.setenv("WDYS_VLLM_ARGS", "--dtype float16 --max-num-seqs 8 --seed=3 --enforce-eager")
    assert registry.describer_settings("vllm:org/model-a") == flagged  # scheduling only: same key
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    assert registry.describer_settings("vllm:org/model-a")["batch_invariant"] is True
    assert started(fake_vllm) == []  # the key costs no server


def test_a_pinned_revision_is_in_the_key_and_given_to_the_server(fake_vllm):
    describer = VLLMDescriber.load("org/model-b@abc123")
    assert describer.settings()["revision"] == "abc123"
    assert describer.describe([Image.new("RGB", (9, 9))], "what?")[0].text
    (record,) = started(fake_vllm)
    assert (
        record["model"] == "org/model-b"
        and record["argv"][record["argv"].index("--revision") + 1] == "abc123"
    )


def test_one_server_per_model_reused_and_stopped(fake_vllm, monkeypatch):
    monkeypatch.setenv("WDYS_VLLM_GPU_SHARE", "0.6")
    first = VLLMDescriber.load("org/model-c")
    again = VLLMDescriber.load("org/model-c")  # another describer object of the same model
    other = VLLMDescriber.load("org/model-d")
    for describer in (first, again, other, first):
        answers = describer.describe([Image.new("RGB", (9, 9))] * 3, "what?")
        assert all(a.text and a.error is None for a in answers)
    records = started(fake_vllm)
    assert sorted(r["model"] for r in records) == ["org/model-c", "org/model-d"]
    assert all(r["argv"][r["argv"].index("--gpu-memory-utilization") + 1] == "0.6" for r in records)
    assert all(alive(r["pid"]) for r in records)
    vllm_server.stop_all()
    assert not any(alive(r["pid"]) for r in records) and vllm_server.running() == {}


def failing_run(model: str) -> int:
    def main(argv: list[str] | None) -> None:
        VLLMDescriber.load(model).describe([Image.new("RGB", (9, 9))], "what?")

    return guarded(main, [])


def test_a_failed_start_is_one_line_with_the_logs_tail(fake_vllm, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_VLLM_FAIL_START", "CUDA out of memory while loading the weights")
    assert failing_run("org/too-big") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "exited with status 1 before it was ready" in err and "org/too-big" in err
    assert "RuntimeError: CUDA out of memory while loading the weights" in err  # the log's tail
    log = Path(err.split("its log ")[1].split(" ends:")[0])
    assert log.parent == fake_vllm.parent / "logs" and "CUDA out of memory" in log.read_text()
    assert vllm_server.running() == {}


def test_a_slow_start_is_waited_for_and_a_too_slow_one_fails(fake_vllm, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_VLLM_START_DELAY_S", "2")
    assert VLLMDescriber.load("org/slow").describe([Image.new("RGB", (9, 9))], "what?")[0].text

    monkeypatch.setenv("FAKE_VLLM_START_DELAY_S", "60")
    monkeypatch.setenv("WDYS_VLLM_START_TIMEOUT_S", "1")
    assert failing_run("org/slower") == 2
    err = capsys.readouterr().err
    assert "did not answer within 1 s" in err and "loading weights" in err
    slower = [r for r in started(fake_vllm) if r["model"] == "org/slower"]
    assert slower and not alive(slower[0]["pid"])  # the half-started server was stopped


def test_a_missing_vllm_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("WDYS_VLLM", str(tmp_path / "no-vllm"))
    with pytest.raises(UserError, match="make vllm"):
        registry.describer_settings("vllm:org/model")


def test_a_server_dying_mid_call_fails_the_describer(fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DIE_AFTER", "3")
    monkeypatch.setenv("WDYS_OPENAI_MAX_RETRIES", "1")
    describer = VLLMDescriber.load("org/dies")
    with pytest.raises(DescriberUnavailable, match=r"exited mid-run \(status 3\).*died after 3 answers"):
        describer.describe([Image.new("RGB", (9 + i, 9)) for i in range(8)], "what?")
    with pytest.raises(DescriberUnavailable):  # and for every later call
        describer.describe([Image.new("RGB", (9, 9))], "what?")


def test_a_server_holds_a_slot_of_its_devices_limit_while_it_runs(
    prefect_server, fake_vllm, monkeypatch, capsys
):
    from prefect.client.orchestration import get_client

    from tasks.slots import device_limit_name  # the model tasks' limits; it lends the servers theirs

    monkeypatch.setenv("WDYS_DEVICE", "cpu")
    monkeypatch.setenv("WDYS_GPU_LIMIT", prefix := f"gpu{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("WDYS_GPU_SLOTS", "2")

    def taken() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(device_limit_name(prefix, "cpu")).active_slots

    VLLMDescriber.load("org/slotted").describe([Image.new("RGB", (9, 9))] * 3, "what?")
    assert taken() == 1  # held by the server between requests: it is a model on that device
    vllm_server.stop_all()
    assert taken() == 0

    monkeypatch.setenv("WDYS_GPU_LIMIT", f"gpu{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("WDYS_GPU_SLOTS", "1")  # the server would keep the encoder off the device
    assert failing_run("org/one-slot") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has 1 slot" in err and "--limit 2" in err
    assert [s["model"] for s in started(fake_vllm)] == ["org/slotted"]  # none started for it


def test_a_resident_hf_model_is_released_before_a_server_starts_on_its_device(fake_vllm, monkeypatch):
    from backends import hf_resident

    class Resident:  # the residency protocol of an `hf:` describer, without a model to load
        device, resident = "cpu", True

        def release(self) -> None:
            self.resident = False

    monkeypatch.setenv("WDYS_DEVICE", "cpu")
    vlm = Resident()
    hf_resident.loaded(vlm)
    try:
        VLLMDescriber.load("org/model-e").describe([Image.new("RGB", (9, 9))], "what?")
        assert not vlm.resident and hf_resident.resident_on("cpu") == [vllm_server.running()["org/model-e"]]
    finally:
        hf_resident._loaded.remove(vlm)


def test_an_hf_model_loading_on_its_device_releases_the_server_which_starts_again_when_asked(
    fake_vllm, monkeypatch
):
    from backends import hf_resident

    monkeypatch.setenv("WDYS_DEVICE", "cpu")
    monkeypatch.setenv("FAKE_VLLM_DELAY_S", "0.3")
    describer = VLLMDescriber.load("org/model-f")
    assert describer.describe([Image.new("RGB", (9, 9))], "what?")[0].text
    photos = [Image.new("RGB", (9 + i, 9)) for i in range(12)]
    asking = threading.Thread(target=lambda: answers.extend(describer.describe(photos, "what?")))
    answers: list = []

    asking.start()
    time.sleep(0.5)  # requests in flight on the first server
    with hf_resident.loading("cpu"):  # an `hf:` VLM loads on that device (one resident per device)
        first = started(fake_vllm)[0]
        assert not alive(first["pid"])  # released once its requests had their answers
    asking.join(60)

    assert len(answers) == 12 and all(a.text and a.error is None for a in answers)  # none lost
    assert describer.describe([Image.new("RGB", (9, 9))], "what?")[0].text  # asked again: started again
    assert [s["model"] for s in started(fake_vllm)] == ["org/model-f"] * 2
    assert alive(started(fake_vllm)[1]["pid"])


def test_its_tasks_take_no_tag_lease_but_keep_their_gpu_worker() -> None:
    """Like an `openai:` describer's, a `vllm:` one's shard tasks carry no tag (Prefect's per-task
    tag lease stalled the task threads: 0.64 -> 0.86 of the server's rate), yet on Dask they still
    ask for a GPU worker, where their server runs (`on_device`, read by flows/cluster.py)."""
    from tasks.answers import for_describer
    from tasks.describe import describe_shard
    from tasks.slots import MODEL_TAG

    managed = for_describer(describe_shard, "vllm:org/vlm")
    served = for_describer(describe_shard, "openai:org/vlm")
    assert MODEL_TAG in describe_shard.tags and not managed.tags and managed is not served
    assert managed.on_device and not served.on_device
    assert managed.retries == describe_shard.retries
    assert for_describer(describe_shard, "vllm:org/x") is managed
