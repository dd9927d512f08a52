"""The open_clip encoder's speed paths (autocast switch, preprocessing outside the lock and on a
helper thread) change nothing but speed on the CPU: the same embeddings, bit for bit, and the same
predictions as the serial float32 code they replaced, on random ViT-B-32 weights; and precision is
part of the encoder's identity, so embeddings of different precision never share a cache key.

The offline profile's encoder has no `prepare_images` and no precision: its code path is untouched,
which `test_offline_ids_are_untouched` pins down (its predictions are covered by test_pipeline)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from backends.open_clip_encoder import OpenClipEncoder, identity, split_precision, with_content
from backends.registry import encoder_identity, validate_encoder_id

CLASSES = ["cat", "dog", "car", "tree", "boat"]


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_DEVICE", "cpu")
    monkeypatch.delenv("WDYS_CLIP_PRECISION", raising=False)


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Random ViT-B-32 weights saved as a checkpoint: the spec of the encoder under test."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    path = tmp_path_factory.mktemp("vit") / "random.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return f"ViT-B-32/{path}"


def pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (32 + 7 * i, 40, 3), dtype=np.uint8)).convert(
            "L" if i % 3 else "RGB"
        )
        for i in range(n)
    ]


@torch.inference_mode()
def serial_float32(encoder: OpenClipEncoder, images: list[Image.Image]) -> np.ndarray:
    """The code before the change: preprocess a batch, run it, copy it back; float32, one thread."""
    out = []
    for i in range(0, len(images), encoder.batch_size):
        pixels = torch.stack(
            [encoder.preprocess(im.convert("RGB")) for im in images[i : i + encoder.batch_size]]
        )
        out.append(encoder.model.encode_image(pixels.to(encoder.device)).float().cpu().numpy())
    return np.concatenate(out)


def test_same_embeddings_and_predictions_on_cpu(vit_b32: str) -> None:
    spec = identity(vit_b32)
    assert spec == vit_b32  # auto on the CPU is float32: the id (and every cached key) is unchanged
    encoder = OpenClipEncoder.load(spec, batch_size=4)
    images = pictures(10)  # three batches: the helper thread prepares one while another runs
    weights = encoder.encode_texts([f"a photo of a {c}" for c in CLASSES]).vectors

    before = serial_float32(encoder, images)
    overlapped = encoder.encode_images(images)
    prepared = encoder.encode_images(encoder.prepare_images(images))

    assert np.array_equal(before, overlapped) and np.array_equal(before, prepared)
    assert (before @ weights.T).argmax(1).tolist() == (prepared @ weights.T).argmax(1).tolist()
    assert encoder.forward_passes == 2 * 3 + 2  # text: 5 prompts in 2 batches of 4


def test_autocast_is_another_identity_and_runs_in_low_precision(vit_b32: str) -> None:
    amp = OpenClipEncoder.load(vit_b32 + "+amp-bf16", batch_size=4)
    plain = OpenClipEncoder.load(vit_b32 + "+fp32", batch_size=4)
    images = pictures(5)

    low, full = amp.encode_images(images), plain.encode_images(images)

    assert amp.precision == "amp-bf16" and plain.precision == "fp32"
    assert low.dtype == np.float32 and not np.array_equal(low, full)  # bf16 matmuls under autocast
    cos = (low * full).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(full, axis=1)
    assert cos.min() > 0.98
    assert identity(vit_b32 + "+amp-bf16") == vit_b32 + "+amp-bf16"
    assert identity(vit_b32 + "+fp32") == vit_b32


def test_precision_switch_and_device_default(vit_b32: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_CLIP_PRECISION", "amp-fp16")
    # a local checkpoint's id also names its content (test_backend_open_clip), before the precision
    assert encoder_identity("open_clip:" + vit_b32) == f"open_clip:{with_content(vit_b32)}+amp-fp16"
    assert identity(vit_b32 + "+fp32") == vit_b32  # an explicit suffix wins over the variable
    monkeypatch.setenv("WDYS_CLIP_PRECISION", "fp32")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # no GPU here: simulated
    monkeypatch.setenv("WDYS_DEVICE", "cuda")
    assert identity(vit_b32) == vit_b32
    monkeypatch.setenv("WDYS_CLIP_PRECISION", "auto")
    assert identity(vit_b32) == vit_b32 + "+amp-bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert identity(vit_b32) == vit_b32 + "+amp-fp16"
    monkeypatch.setenv("WDYS_CLIP_PRECISION", "half")
    with pytest.raises(ValueError, match="WDYS_CLIP_PRECISION"):
        identity(vit_b32)


def test_suffixes_combine_and_validate(vit_b32: str) -> None:
    assert split_precision("ViT-B-32/openai#quickgelu+amp-bf16") == ("ViT-B-32/openai#quickgelu", "amp-bf16")
    assert split_precision("ViT-B-32//data/a+b.pt") == ("ViT-B-32//data/a+b.pt", "fp32")
    validate_encoder_id(f"open_clip:{vit_b32}#quickgelu+amp-fp16")


def test_offline_ids_are_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WDYS_CLIP_PRECISION", "amp-bf16")
    assert encoder_identity("offline:conse-lite0-minilm") == "offline:conse-lite0-minilm"


def test_the_text_tower_runs_on_the_prompts_positions_only(vit_b32: str) -> None:
    """A causal text tower's end-of-text features ignore the padding after them: a batch of short
    prompts runs on their positions only and gives the whole context's embeddings; a batch with a
    prompt that fills the context runs whole; a tower pooled elsewhere always runs whole."""
    encoder = OpenClipEncoder.load(vit_b32, batch_size=4)
    prompts = [f"a photo of a {c}" for c in CLASSES[:4]] + ["a " * 75, "x"]
    widths: list[int] = []
    hook = encoder.model.transformer.register_forward_pre_hook(
        lambda _, args: widths.append(args[0].shape[1])
    )
    got = encoder.encode_texts(prompts).vectors
    # Read before the reference call below, which runs whole and would satisfy a 77 of its own.
    assert widths == [7, 77]  # <start> a photo of a cat <end>; then 75 x "a" + 2: the whole context
    widths.clear()
    with torch.inference_mode():
        whole = encoder.model.encode_text(encoder.tokenizer(prompts)).numpy()
    np.testing.assert_allclose(got, whole, rtol=1e-4, atol=1e-5)
    widths.clear()
    encoder.model.text_pool_type = "last"
    encoder.encode_texts(prompts[:4])
    hook.remove()
    assert widths == [77]
