"""The `hf:` describer's throughput settings on a real tiny LLaVA saved to disk: the automatic batch
size (largest that fits, found once per model and device), one resident VLM per device with a
released model loading again when asked, and GPU image preprocessing where the processor takes it.

No GPU here: running out of memory is simulated by a `generate` that raises torch's own OOM error
above a batch size, and the CUDA model in the preprocessing test is a stand-in object."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from backends import hf_resident
from backends.hf_describer import HFDescriber, _gpu_preprocessing
from core import heap
from fakes.tiny_vlms import build

PROMPT = "Describe the image."


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llava", tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture
def model_dir(built: Path, tmp_path: Path) -> Path:
    """A fresh copy per test: found batch sizes are remembered per model (dir) and device."""
    return Path(shutil.copytree(built, tmp_path / "model"))


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def photos(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (20 + 3 * i, 20), color=(9 * i, 40, 90)) for i in range(n)]


def fits_at_most(describer: HFDescriber, monkeypatch: pytest.MonkeyPatch, rows: int) -> list[int]:
    """generate() runs out of memory above `rows` rows (simulated); returns the batch sizes tried."""
    real, seen = describer._model.generate, []

    def generate(**kwargs: torch.Tensor) -> torch.Tensor:
        seen.append(kwargs["input_ids"].shape[0])
        if seen[-1] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kwargs)

    monkeypatch.setattr(describer._model, "generate", generate)
    return seen


def text_of(answers: list) -> list[str | None]:
    return [a.text for a in answers]


def test_auto_batch_halves_on_out_of_memory_once_per_model_and_device(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WDYS_HF_BATCH_SIZE", "auto")
    describer = HFDescriber.load(str(model_dir), max_new_tokens=4)
    seen = fits_at_most(describer, monkeypatch, 3)

    answers = describer.describe(photos(10), PROMPT)

    assert seen == [10, 5, 2, 2, 1, 2, 2, 1]  # 64 would not fit: halved until it ran, nothing lost
    assert all(a.error is None and a.text for a in answers)
    assert text_of(answers) == text_of(
        HFDescriber.load(str(model_dir), 4, batch_size=1).describe(photos(10), PROMPT)
    )
    again = HFDescriber.load(str(model_dir), max_new_tokens=4)
    assert again._batch_size == 2  # found once: a later load on the same device starts there
    fixed = HFDescriber.load(str(model_dir), max_new_tokens=4, batch_size=6)
    seen = fits_at_most(fixed, monkeypatch, 3)
    fixed.describe(photos(6), PROMPT)
    assert seen == [6, 1, 1, 1, 1, 1, 1]  # a fixed batch does not shrink: its items are retried alone


def test_one_vlm_resident_per_device(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_dir = Path(shutil.copytree(model_dir, tmp_path / "other"))
    first = HFDescriber.load(str(model_dir), max_new_tokens=4)
    before = text_of(first.describe(photos(3), PROMPT))

    second = HFDescriber.load(str(other_dir), max_new_tokens=4)

    assert not first.resident and second.resident
    assert hf_resident.resident_on("cpu") == [second]
    assert text_of(first.describe(photos(3), PROMPT)) == before  # loads again, answers the same
    assert first.resident and not second.resident
    monkeypatch.setenv("WDYS_HF_RESIDENT", "0")  # the user asks to keep every VLM loaded
    second.describe(photos(1), PROMPT)
    assert first.resident and second.resident


def test_a_released_vlm_is_freed_although_the_run_settled_its_heap(model_dir: Path, tmp_path: Path) -> None:
    first = HFDescriber.load(str(model_dir), max_new_tokens=4)
    first._model.__dict__["_loop"] = [first._model]  # a reference cycle: only the collector frees it
    freed = weakref.ref(first._model)
    heap.settle()  # as after the run's model loads (core/heap.py)
    try:
        HFDescriber.load(str(Path(shutil.copytree(model_dir, tmp_path / "other"))), max_new_tokens=4)

        assert not first.resident and freed() is None  # released, memory given back
    finally:
        gc.unfreeze()


def test_images_are_preprocessed_on_the_gpu_where_the_processor_can(model_dir: Path) -> None:
    describer = HFDescriber.load(str(model_dir), max_new_tokens=4)
    processor = describer._processor
    on_gpu = SimpleNamespace(device=torch.device("cuda", 0))  # stands in for a model on a GPU

    assert _gpu_preprocessing(processor, on_gpu) == {"device": "cuda:0"}
    assert _gpu_preprocessing(processor, describer._model) == {}  # on the CPU nothing changes
    assert _gpu_preprocessing(SimpleNamespace(image_processor=object()), on_gpu) == {}  # a slow processor
    # the real processor routes `device` to its image processor and makes the same pixels with it
    ims = [[im] for im in photos(2)]
    text = describer._render([{"type": "image"}, {"type": "text", "text": PROMPT}])
    plain = processor(text=[text] * 2, images=ims, padding=True, return_tensors="pt")
    routed = processor(text=[text] * 2, images=ims, padding=True, return_tensors="pt", device="cpu")
    assert all(torch.equal(plain[k], routed[k]) for k in plain)
