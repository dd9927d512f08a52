"""Each VLM family the README names, as a tiny random model built offline (fakes/tiny_vlms.py),
saved with its processor and loaded back through `load_describer("hf:<dir>")`: a batch of images of
different sizes answers exactly as the same images one by one, and text-only class samples too.

Gemma-3's processor reads a flat list of images as ONE sample with several images, so a batch of
two fails unless every image is its own list; the describer passes nested lists to every model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from backends.base import Answer
from backends.hf_describer import HFDescriber
from fakes.tiny_vlms import ARCHITECTURES, build, load_on_cpu

pytestmark = pytest.mark.slow  # four models, about 20 s on 2 busy cores

MAX_NEW_TOKENS = 6
PROMPT = "Describe the image."
SIZES = [(30, 20), (17, 40), (32, 32)]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Random photos of different sizes: different pixels, so that each answer is the image's own."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="module")
def describer(model_dir: Path) -> HFDescriber:
    return load_on_cpu(model_dir, MAX_NEW_TOKENS)


def _key(answers: list[Answer]) -> list[tuple[object, ...]]:
    return [(a.text, a.prompt_tokens, a.completion_tokens, a.error, a.truncated) for a in answers]


def test_batch_of_images_matches_one_by_one(describer: HFDescriber, images: list[Image.Image]) -> None:
    before = describer.forward_passes
    batched = describer.describe(images, PROMPT)
    assert describer.forward_passes == before + 1  # one generate() for the whole batch
    single = [describer.describe([image], PROMPT)[0] for image in images]

    assert _key(batched) == _key(single)
    assert all(a.error is None and a.text and a.prompt_tokens > 0 for a in batched)
    assert len({a.text for a in batched}) > 1, "the images, not only the prompt, should decide the answers"
    predicted = describer.guess(images[::-1], [PROMPT] * 3, [["cat", "dog"]] * 3)
    assert _key(predicted) == _key(batched[::-1])


def test_class_samples_batch_matches_one_by_one(describer: HFDescriber) -> None:
    prompts = ["Describe a cat:", "Describe a cat:", "Describe a dog:"]
    samples = [0, 1, 0]
    batched = describer.describe_classes(prompts, samples, ["cat", "cat", "dog"])
    single = [describer.describe_classes([p], [s], [])[0] for p, s in zip(prompts, samples, strict=True)]

    assert _key(batched) == _key(single)
    assert all(a.prompt_tokens and (a.text or a.error == "empty answer") for a in batched)


def test_gemma3_processor_needs_nested_image_lists(images: list[Image.Image], tmp_path: Path) -> None:
    """Why the describer nests: the flat list a batch used to pass is refused by Gemma-3."""
    processor = AutoProcessor.from_pretrained(build("gemma3", tmp_path))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with pytest.raises(ValueError, match="number of"):
        processor(text=[text, text], images=images[:2], padding=True, return_tensors="pt")
    nested = processor(
        text=[text, text], images=[[im] for im in images[:2]], padding=True, return_tensors="pt"
    )
    assert nested["pixel_values"].shape[0] == 2
