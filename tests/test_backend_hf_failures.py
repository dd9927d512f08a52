"""How HFDescriber fails: loading problems and a device fault raise DescriberUnavailable
(one line, what to check), for that call and every later one; a batch that fails is retried item
by item and only the items that fail alone are errors. Plus what `hf:` ids resolve to: pinned
revisions, the HF cache's `main`, and content hashes of local dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from backends.base import DescriberUnavailable
from backends.hf_describer import HFDescriber
from backends.hf_spec import dir_content_hash, parse_spec, settings_for
from fakes.tiny_vlms import build

PROMPT = "Describe the image."
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llava", tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _images(*widths: int) -> list[Image.Image]:
    return [Image.new("RGB", (w, 20), color=(3 * w, 40, 90)) for w in widths]


def _unavailable(call: object) -> str:
    with pytest.raises(DescriberUnavailable) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)
    return str(info.value)


OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _fail_when(
    describer: HFDescriber, monkeypatch: pytest.MonkeyPatch, broken: object, error: Exception = OOM
) -> list[int]:
    """Makes generate() raise `error` when `broken(batch rows)` says so (a mock: no GPU here to run
    out of memory or fault); returns the batch sizes it saw."""
    real = describer._model.generate
    seen: list[int] = []

    def generate(**kwargs: torch.Tensor) -> torch.Tensor:
        rows = kwargs["input_ids"].shape[0]
        seen.append(rows)
        if broken(kwargs):  # type: ignore[operator]
            raise error
        return real(**kwargs)

    monkeypatch.setattr(describer._model, "generate", generate)
    return seen


def test_oversized_batch_is_retried_item_by_item(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    describer = HFDescriber.load(str(model_dir), max_new_tokens=4)
    seen = _fail_when(describer, monkeypatch, lambda kw: kw["input_ids"].shape[0] > 1)

    answers = describer.describe(_images(20, 30, 40), PROMPT)

    assert seen == [3, 1, 1, 1]
    assert all(a.error is None and a.text for a in answers)


def test_item_failing_alone_is_its_error(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    describer = HFDescriber.load(str(model_dir), max_new_tokens=4)
    # the middle image (the only one whose pixels are this bright) runs out of memory, alone or not
    _fail_when(describer, monkeypatch, lambda kw: bool((kw["pixel_values"][:, 0] > 0.5).any()))

    ok1, bad, ok2 = describer.describe(_images(20, 90, 30), PROMPT)

    assert ok1.text and ok2.text and ok1.error is ok2.error is None
    assert bad.text is None and bad.retryable and "out of memory" in bad.error


def test_device_error_is_unavailable(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA error that is not out-of-memory breaks the device for every item: the describer's
    failure, never an item's answer."""
    describer = HFDescriber.load(str(model_dir), max_new_tokens=4)
    fault = RuntimeError("CUDA error: an illegal memory access was encountered")
    seen = _fail_when(describer, monkeypatch, lambda kw: kw["input_ids"].shape[0] == 1, fault)

    message = _unavailable(lambda: describer.describe(_images(20), PROMPT))

    assert "illegal memory access" in message and "not out of memory" in message
    assert "nvidia-smi" in message and str(model_dir) in message
    calls = len(seen)
    assert _unavailable(lambda: describer.describe_classes(["Describe a cat"], [0], ["cat"])) == message
    assert _unavailable(lambda: describer.guess(_images(20), [PROMPT], [["a"]])) == message
    assert len(seen) == calls  # later calls fail without running the model


def test_items_that_run_out_of_memory_alone_stay_retryable(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows asked again that run out of memory once more are their own retryable answers: the
    describer never ends the run on them (a retry of a few pending items)."""
    describer = HFDescriber.load(str(model_dir), max_new_tokens=4)
    _fail_when(describer, monkeypatch, lambda kw: True)

    answers = describer.describe(_images(20, 30), PROMPT)

    assert all(a.text is None and a.retryable and "out of memory" in a.error for a in answers)


def test_batch_size_setting(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_HF_BATCH_SIZE", "2")
    describer = HFDescriber.load(str(model_dir), max_new_tokens=4)
    describer.describe(_images(20, 30, 40), PROMPT)
    assert describer.forward_passes == 2
    assert HFDescriber.load(str(model_dir), max_new_tokens=4, batch_size=3)._batch_size == 3
    monkeypatch.setenv("WDYS_HF_BATCH_SIZE", "zero")
    assert "WDYS_HF_BATCH_SIZE" in _unavailable(lambda: settings_for(str(model_dir), 4))


def test_missing_or_broken_model_dir_is_unavailable(tmp_path: Path) -> None:
    message = _unavailable(lambda: HFDescriber.load(str(tmp_path / "no-such-model")))
    assert "does not exist" in message and "model id" in message
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    message = _unavailable(lambda: HFDescriber.load(str(broken)))
    assert "cannot load" in message and "check the model id or dir" in message
    # a model that did not load is not loaded again in this process: the same error at once
    (broken / "config.json").write_text("{}")
    assert _unavailable(lambda: HFDescriber.load(str(broken))) == message


def test_remote_code_needs_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(
        '{"model_type": "tiny-custom-vlm", "auto_map": {"AutoConfig": "configuration_tiny.TinyConfig"}}'
    )
    (tmp_path / "configuration_tiny.py").write_text("raise RuntimeError('remote code ran')\n")

    message = _unavailable(lambda: HFDescriber.load(str(tmp_path)))

    assert "WDYS_TRUST_REMOTE_CODE=1" in message and "remote code ran" not in message
    assert "trust_remote_code" not in settings_for(str(tmp_path), 4)
    monkeypatch.setenv("WDYS_TRUST_REMOTE_CODE", "1")
    assert settings_for(str(tmp_path), 4)["trust_remote_code"] is True


def test_model_without_chat_template_is_unavailable(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "no-template")
    for name in ("chat_template.jinja", "chat_template.json"):
        (copy / name).unlink(missing_ok=True)
    describer = HFDescriber.load(str(copy))
    if describer._processor.chat_template or describer._tokenizer.chat_template:
        pytest.fail("the copy still has a chat template: " + str(sorted(p.name for p in copy.iterdir())))
    message = _unavailable(lambda: describer.describe(_images(20), PROMPT))
    assert "chat template" in message


def test_local_dir_key_is_its_content(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / model_dir.name)
    assert dir_content_hash(copy) == dir_content_hash(model_dir)  # the content, not the path
    assert settings_for(str(copy), 4) == settings_for(str(model_dir), 4)
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"vision_feature_layer": -1', '"vision_feature_layer": -2'))
    assert dir_content_hash(copy) != dir_content_hash(model_dir)


def _hub_cache(root: Path, repo: str, model_dir: Path, ref: bool) -> None:
    """The layout huggingface_hub reads offline: snapshots/<commit>/<files> and refs/main."""
    folder = root / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, folder / "snapshots" / REVISION)
    if ref:
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(REVISION)


def test_hub_ids_are_keyed_by_revision(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    _hub_cache(tmp_path, "tiny-org/llava-main", model_dir, ref=True)
    _hub_cache(tmp_path, "tiny-org/llava-pinned", model_dir, ref=False)

    assert parse_spec("org/repo@v1.0") == ("org/repo", "v1.0") and parse_spec("org/repo") == (
        "org/repo",
        None,
    )
    assert settings_for("tiny-org/llava-main", 4)["revision"] == REVISION  # refs/main of the cache
    assert settings_for("tiny-org/not-cached", 4)["revision"] == "unresolved"  # offline: no network
    pinned = settings_for(f"tiny-org/llava-pinned@{REVISION}", 4)
    assert pinned["revision"] == REVISION and pinned["model"] == "tiny-org/llava-pinned"

    for spec in ("tiny-org/llava-main", f"tiny-org/llava-pinned@{REVISION}"):
        describer = HFDescriber.load(spec, max_new_tokens=4)
        assert describer.settings() == settings_for(spec, 4)
        assert describer.describe(_images(20), PROMPT)[0].text
    other = "ffffffffffffffffffffffffffffffffffffffff"
    message = _unavailable(lambda: HFDescriber.load(f"tiny-org/llava-pinned@{other}"))
    assert "cannot load" in message and other in message
