"""HFDescriber against a tiny random Qwen2-VL built offline and saved to disk with its processor.

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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from backends.base import Answer, Describer
from backends.hf_describer import HFDescriber, _completion_length
from backends.registry import load_describer
from sources.benchmarks import EMBEDDED_DATASETS

MAX_NEW_TOKENS = 8
PROMPT = "Describe the image."
PAD, EOS = "<|endoftext|>", "<|im_end|>"
SPECIAL_TOKENS = [
    PAD,
    "<|im_start|>",
    EOS,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["a photo of a cat", "describe the image", "a short caption of a dog on the grass"]


def _tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences: any text encodes, and nothing is downloaded."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, chat_template=CHAT_TEMPLATE
    )


def _processor(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLProcessor:
    """4-pixel patches merged 2x2: a 32x32 image is 4 placeholder tokens, 64x48 is 12."""
    sizes = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=8 * 8, max_pixels=64 * 64, **sizes),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**sizes),
        chat_template=CHAT_TEMPLATE,
    )


def _model(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLForConditionalGeneration:
    ids = tokenizer.convert_tokens_to_ids
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": ids(PAD),
        "eos_token_id": ids(EOS),
        "pad_token_id": ids(PAD),
        # head_dim 8: the (temporal, height, width) rotary sections cover its 4 frequencies
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
    }
    vision = {
        "depth": 1,
        "embed_dim": 32,
        "hidden_size": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids(EOS)
    model.generation_config.pad_token_id = ids(PAD)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2-vl")
    tokenizer = _tokenizer()
    _model(tokenizer).save_pretrained(path)
    _processor(tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def describer(model_dir: Path) -> HFDescriber:
    """On the CPU in float32 even where a GPU exists, so that batched and single runs match exactly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WDYS_DEVICE", "cpu")
        loaded = load_describer("hf:" + str(model_dir), max_new_tokens=MAX_NEW_TOKENS)
    assert isinstance(loaded, HFDescriber)
    return loaded


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Three real CIFAR-10 photographs, resized apart so that their prompts differ in length."""
    path = EMBEDDED_DATASETS / "cifar10" / "dev.parquet"
    if not path.exists():
        pytest.skip(f"no local CIFAR-10 dev split at {path}")
    rows = next(pq.ParquetFile(path).iter_batches(batch_size=3, columns=["img"])).to_pylist()
    images = [Image.open(io.BytesIO(row["img"]["bytes"])) for row in rows]
    return [images[0], images[1].resize((48, 32)), images[2].resize((64, 48))]


def _without_latency(answers: list[Answer]) -> list[tuple[object, ...]]:
    return [(a.text, a.prompt_tokens, a.completion_tokens, a.error) for a in answers]


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
        assert answer.error is None
        assert isinstance(answer.text, str)
        assert 1 <= answer.completion_tokens <= MAX_NEW_TOKENS
        assert answer.prompt_tokens > 0
        assert answer.latency_s > 0
    prompt_lengths = [a.prompt_tokens for a in answers]
    assert len(set(prompt_lengths)) == len(photos), "images of different sizes should pad differently"


def test_batch_matches_one_by_one(describer: HFDescriber, photos: list[Image.Image]) -> None:
    """Greedy answers must not depend on what else is in the batch: the left padding is masked out."""
    batched = describer.describe(photos, PROMPT)
    single = [describer.describe([photo], PROMPT)[0] for photo in photos]
    assert _without_latency(batched) == _without_latency(single)
    predicted = describer.predict(
        photos, [PROMPT] * len(photos), [["cat", "dog"]] * len(photos)
    )  # same path: the prompt lists the classes
    assert _without_latency(predicted) == _without_latency(batched)


def test_describe_classes_samples(describer: HFDescriber) -> None:
    prompts = ["A short caption of an image of a cat:", "A short caption of an image of a dog:"]
    before = describer.forward_passes
    first = describer.describe_classes(prompts, samples=3)
    assert describer.forward_passes > before
    assert [len(answers) for answers in first] == [3, 3]
    for answers in first:
        for answer in answers:
            assert answer.error is None and isinstance(answer.text, str)
            assert 1 <= answer.completion_tokens <= MAX_NEW_TOKENS
            assert answer.prompt_tokens > 0
    assert len({a.text for a in first[0]}) > 1, "samples should differ at temperature 0.99"
    again = describer.describe_classes(prompts, samples=3)
    assert [_without_latency(a) for a in again] == [_without_latency(a) for a in first]


def test_settings_are_small_and_stable(describer: HFDescriber, model_dir: Path) -> None:
    assert describer.settings() == {
        "model": model_dir.name,
        "max_new_tokens": MAX_NEW_TOKENS,
        "do_sample": False,
        "class_temperature": 0.99,
    }


def test_failed_batch_becomes_error_answers(
    describer: HFDescriber, photos: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(describer._model, "generate", broken)
    answers = describer.describe(photos, PROMPT)
    assert [(a.text, a.error) for a in answers] == [(None, "RuntimeError: out of memory")] * len(photos)
    assert describer.describe_classes(["cat"], samples=2) == [
        [Answer(None, error="RuntimeError: out of memory")] * 2
    ]


def test_completion_length_stops_at_eos() -> None:
    assert _completion_length(torch.tensor([5, 6, 2, 0, 0]), {2}) == 3
    assert _completion_length(torch.tensor([5, 6, 7]), {2}) == 3


def test_missing_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_describer("hf:" + str(tmp_path / "no-such-model"))
