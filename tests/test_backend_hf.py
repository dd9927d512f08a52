"""HFDescriber against a tiny random Qwen2-VL built offline (fakes/tiny_vlms.py) and loaded back
through the registry: batching, seeded class-description samples and settings.

Qwen2-VL gives each image as many placeholder tokens as its size asks for, so images of different
sizes make prompts of different lengths: batching them exercises the left padding for real.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from backends.base import Answer, Describer, sample_seed
from backends.hf_describer import HFDescriber
from backends.hf_sampling import SeededGumbel, completion_length
from backends.hf_spec import settings_for
from backends.registry import describer_settings
from fakes.tiny_vlms import build, load_on_cpu
from sources.benchmarks import EMBEDDED_DATASETS

MAX_NEW_TOKENS = 8
PROMPT = "Describe the image."
CLASS_PROMPTS = ["A short caption of an image of a cat:", "A short caption of an image of a dog:"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen2_vl", tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU in float32 even where a GPU exists, so that batched and single runs match exactly."""
    monkeypatch.setenv("WDYS_DEVICE", "cpu")


@pytest.fixture(scope="module")
def describer(model_dir: Path) -> HFDescriber:
    return load_on_cpu(model_dir, MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Three real CIFAR-10 photographs, resized apart so that their prompts differ in length."""
    path = EMBEDDED_DATASETS / "cifar10" / "dev.parquet"
    if not path.exists():
        pytest.skip(f"no local CIFAR-10 dev split at {path}")
    rows = next(pq.ParquetFile(path).iter_batches(batch_size=3, columns=["img"])).to_pylist()
    images = [Image.open(io.BytesIO(row["img"]["bytes"])) for row in rows]
    return [images[0], images[1].resize((48, 32)), images[2].resize((64, 48))]


def without_latency(answers: list[Answer]) -> list[tuple[object, ...]]:
    return [(a.text, a.prompt_tokens, a.completion_tokens, a.error, a.truncated) for a in answers]


def test_describe_answers_every_image(
    describer: HFDescriber, model_dir: Path, photos: list[Image.Image]
) -> None:
    assert isinstance(describer, Describer)
    assert describer.model_id == "hf:" + str(model_dir)
    before = describer.forward_passes
    answers = describer.describe(photos, PROMPT)
    assert describer.forward_passes == before + 1
    assert len(answers) == len(photos)
    for answer in answers:
        assert answer.error is None and answer.text
        assert 1 <= answer.completion_tokens <= MAX_NEW_TOKENS
        assert answer.truncated == (answer.completion_tokens == MAX_NEW_TOKENS)
        assert answer.prompt_tokens > 0 and answer.latency_s > 0
    prompt_lengths = [a.prompt_tokens for a in answers]
    assert len(set(prompt_lengths)) == len(photos), "images of different sizes should pad differently"


def test_batch_matches_one_by_one(describer: HFDescriber, photos: list[Image.Image]) -> None:
    """Greedy answers must not depend on what else is in the batch: the left padding is masked out."""
    batched = describer.describe(photos, PROMPT)
    single = [describer.describe([photo], PROMPT)[0] for photo in photos]
    assert without_latency(batched) == without_latency(single)
    predicted = describer.guess(
        photos, [PROMPT] * len(photos), [["cat", "dog"]] * len(photos)
    )  # same path: the prompt lists the classes
    assert without_latency(predicted) == without_latency(batched)


def test_class_samples_do_not_depend_on_the_batch(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [p for p in CLASS_PROMPTS for _ in range(3)]
    samples = [0, 1, 2] * 2
    runs = []
    for size in ("1", "2", "8"):
        monkeypatch.setenv("WDYS_HF_BATCH_SIZE", size)
        runs.append(HFDescriber.load(str(model_dir), max_new_tokens=MAX_NEW_TOKENS))
    batched = runs[-1].describe_classes(prompts, samples, ["cat"] * 3 + ["dog"] * 3)

    assert runs[-1].forward_passes == 1 and runs[0]._batch_size == 1
    assert all(a.error is None and a.text and a.prompt_tokens > 0 for a in batched)
    assert len({a.text for a in batched[:3]}) > 1, "samples should differ at temperature 0.99"
    for run in runs[:2]:
        assert without_latency(run.describe_classes(prompts, samples, [])) == without_latency(batched)
    # Any subset, in any order, asked alone gets the same samples.
    alone = [runs[-1].describe_classes([prompts[i]], [samples[i]], [])[0] for i in (4, 0)]
    assert without_latency(alone) == without_latency([batched[4], batched[0]])
    assert runs[-1].describe_classes([], [], []) == []


def test_seeded_gumbel_samples_the_softmax_at_the_temperature() -> None:
    """Gumbel-max: argmax(logits / T + noise) over many seeds follows softmax(logits / T)."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    temperature = 0.7
    draws = 4000
    counts = torch.zeros(4)
    for seed in range(draws):
        noisy = SeededGumbel([seed], temperature)(torch.zeros(1, 1, dtype=torch.long), logits)
        counts[int(noisy.argmax())] += 1
    expected = torch.softmax(logits[0] / temperature, dim=0)
    assert torch.allclose(counts / draws, expected, atol=0.025), (counts / draws, expected)
    # the same seed draws the same noise; two rows with different seeds draw different noise
    pair = SeededGumbel([1, 2], 1.0)(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5))
    assert torch.equal(
        pair[0], SeededGumbel([1], 1.0)(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 5))[0]
    )
    assert not torch.equal(pair[0], pair[1])


def test_seeded_gumbel_draws_float32_noise_where_the_scores_are() -> None:
    """The noise is drawn by generators on the scores' device, in the scores' float32, at batch 16
    with Gemma-3's 262k vocabulary: no float64 draw and no copy between devices at each step (which
    on a GPU cost as much as the model's own step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[str, torch.dtype, str]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.seen.append((str(func), t.dtype, t.device.type))
            return out

    scores = torch.randn(16, 262_144)
    sampler, input_ids = SeededGumbel(range(16), 0.99), torch.zeros(16, 1, dtype=torch.long)
    with Record() as record:
        noisy = sampler(input_ids, scores)
    assert noisy.dtype == torch.float32 and noisy.device == scores.device
    assert {dtype for _, dtype, _ in record.seen} == {torch.float32}, record.seen
    assert not [op for op, *_ in record.seen if "_to_copy" in op or "copy_" in op], record.seen
    assert all(g.device == scores.device for g in sampler.generators_on(scores.device))


def test_settings_are_the_key_without_loading(describer: HFDescriber, model_dir: Path) -> None:
    expected = {
        "backend": "hf",
        "model": model_dir.name,
        "revision": describer.settings()["revision"],
        "dtype": "float32",
        "max_new_tokens": MAX_NEW_TOKENS,
        "do_sample": False,
        "class_temperature": 0.99,
    }
    assert describer.settings() == expected
    assert str(expected["revision"]).startswith("sha256:") and len(str(expected["revision"])) == 71
    assert settings_for(str(model_dir), MAX_NEW_TOKENS) == expected
    assert describer_settings("hf:" + str(model_dir), MAX_NEW_TOKENS) == expected


def test_seeds_are_per_prompt_and_sample() -> None:
    assert sample_seed("a", 0) == sample_seed("a", 0)
    assert len({sample_seed(p, s) for p in ("a", "b") for s in range(3)}) == 6


def test_completion_length_stops_at_eos() -> None:
    assert completion_length(torch.tensor([5, 6, 2, 0, 0]), {2}) == (3, False)
    assert completion_length(torch.tensor([5, 6, 7]), {2}) == (3, True)
