"""OpenClipEncoder against a tiny random open_clip model saved to disk in both supported layouts.

The reference embeddings come from the in-memory model through open_clip's own API, so the test
checks that the backend loads the saved weights and preprocesses exactly as open_clip does.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from backends import registry
from backends.base import Encoder
from backends.registry import load_encoder
from core.errors import BadParameter

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS_CFG = {
    "size": 64,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
LONG_TEXT = " ".join(f"word{i}" for i in range(300))
SHORT_TEXT = "a photo of a dog"


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the comparison with the CPU reference exact on machines with a GPU too."""
    monkeypatch.setenv("WDYS_DEVICE", "cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, torch.nn.Module]:
    """Registers a tiny architecture under a unique name; returns it and a model with distinct weights."""
    name = f"wdys-tiny-{uuid.uuid4().hex[:8]}"
    cfg_dir = tmp_path_factory.mktemp("configs")
    (cfg_dir / f"{name}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return name, model.eval()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(80, 64), (64, 64), (50, 90), (64, 100), (33, 33)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images[-1] = images[-1].convert("L")  # the backend must convert to RGB itself
    return images


def _reference(model: torch.nn.Module, images: list[Image.Image], texts: list[str]):
    preprocess = image_transform_v2(PreprocessCfg(**PREPROCESS_CFG), is_train=False)
    with torch.no_grad():
        pixels = torch.stack([preprocess(im.convert("RGB")) for im in images])
        return model.encode_image(pixels).numpy(), model.encode_text(open_clip.tokenize(texts)).numpy()


def _check_against_reference(enc: Encoder, model: torch.nn.Module) -> None:
    enc.batch_size = 2  # type: ignore[attr-defined]
    images, texts = _images(), [SHORT_TEXT, LONG_TEXT, "x"]
    ref_img, ref_txt = _reference(model, images, texts)

    before = enc.forward_passes
    assert enc.encode_images([]).shape == (0, 32) and enc.encode_texts([]).vectors.shape == (0, 32)
    assert enc.forward_passes == before
    got_img = enc.encode_images(images)
    assert enc.forward_passes == before + 3  # 5 images in batches of 2
    got = enc.encode_texts(texts)
    assert enc.forward_passes == before + 5

    assert got_img.dtype == np.float32 and got_img.shape == (5, 32)
    np.testing.assert_allclose(got_img, ref_img, rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.linalg.norm(got_img, axis=1), 1.0)  # not normalised
    assert got.vectors.dtype == np.float32 and got.vectors.shape == (3, 32)
    np.testing.assert_allclose(got.vectors, ref_txt, rtol=1e-4, atol=1e-5)
    assert got.truncated == [False, True, False]
    # "a" is one BPE token: 75 of them plus start/end fill the 77-token context exactly
    assert enc.encode_texts(["a " * 75, "a " * 76]).truncated == [False, True]


def test_local_dir_layout(tiny: tuple[str, torch.nn.Module], tmp_path: Path) -> None:
    _, model = tiny
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": PREPROCESS_CFG})
    )
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")

    enc = load_encoder(f"open_clip:local-dir:{tmp_path}")

    assert isinstance(enc, Encoder)
    assert enc.model_id == f"open_clip:local-dir:{tmp_path}"
    assert enc.dim == 32 and enc.context_length == 77
    assert enc.forward_passes == 0
    _check_against_reference(enc, model)


def test_arch_with_checkpoint_path(tiny: tuple[str, torch.nn.Module], tmp_path: Path) -> None:
    name, model = tiny
    ckpt = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)

    enc = load_encoder(f"open_clip:{name}/{ckpt}")

    assert enc.model_id == f"open_clip:{name}/{ckpt}"
    assert enc.dim == 32 and enc.context_length == 77
    _check_against_reference(enc, model)


def test_spec_grammar(tiny: tuple[str, torch.nn.Module]) -> None:
    from backends.open_clip_encoder import OpenClipEncoder, parse_spec

    assert parse_spec("ViT-B-32//tmp/x/ckpt.pt") == ("ViT-B-32", "/tmp/x/ckpt.pt")
    assert parse_spec("ViT-B-32/hf-hub:org/repo") == ("ViT-B-32", "hf-hub:org/repo")
    assert parse_spec("hf-hub:org/repo") == ("hf-hub:org/repo", None)
    with pytest.raises(ValueError, match="random weights"):
        OpenClipEncoder.load(tiny[0])


def _activations(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


@pytest.mark.slow  # two ViT-B-32 models
def test_openai_tag_loads_offline_with_quickgelu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI's weights were trained with QuickGELU; open_clip builds `ViT-B-32` with GELU and only
    warns. Random weights stand in a private hub cache under the id the `openai` tag resolves to,
    and the product's own loader builds every activation as QuickGELU."""
    hub_id = open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].strip("/")
    revision = "0" * 40
    repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32", force_quick_gelu=True).eval()
    torch.save(reference.state_dict(), repo / "snapshots" / revision / "open_clip_pytorch_model.bin")
    # huggingface_hub reads HF_HOME when it is imported: point its constant at the private cache.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    encoder = load_encoder("open_clip:ViT-B-32/openai")
    gelu = load_encoder("open_clip:ViT-B-32/openai#gelu")  # a user can still force either

    assert _activations(encoder.model) == {"QuickGELU"}
    assert _activations(gelu.model) == {"GELU"}
    image = Image.new("RGB", (224, 224), (120, 30, 200))
    with torch.no_grad():
        expected = reference.encode_image(encoder.preprocess(image)[None]).numpy()
    np.testing.assert_allclose(encoder.encode_images([image]), expected, rtol=1e-4, atol=1e-5)
    assert np.abs(gelu.encode_images([image]) - expected).max() > 1e-3  # the activation matters
    registry._load_encoder.cache_clear()  # two ViT-B-32 copies need not stay for the whole session


def test_activation_follows_the_weights() -> None:
    from backends.open_clip_encoder import activation_kwargs

    assert activation_kwargs("ViT-L-14/openai") == {"force_quick_gelu": True}
    assert activation_kwargs("ViT-B-32/laion2b_s34b_b79k") == {"quick_gelu": False}
    hub = open_clip.pretrained.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"]
    assert activation_kwargs(f"ViT-B-16/hf-hub:{hub}") == {"force_quick_gelu": True}
    assert activation_kwargs("ViT-B-32-quickgelu/openai#gelu") == {"quick_gelu": False}
    assert activation_kwargs("ViT-B-32//some/ckpt.pt") == {}  # a bare file: the architecture decides
    with pytest.raises(ValueError, match="#quickgelu or #gelu"):
        activation_kwargs("ViT-B-32/openai#relu")


def _built_quick_gelu(arch: str, kwargs: dict[str, bool]) -> bool:
    """The activation open_clip's `create_model` builds from the architecture's config and these
    arguments: `force_quick_gelu` sets it, other keyword arguments override the config."""
    cfg = dict(open_clip.get_model_config(arch))
    if kwargs.get("force_quick_gelu"):
        cfg["quick_gelu"] = True
    cfg.update({k: v for k, v in kwargs.items() if k != "force_quick_gelu"})
    return bool(cfg.get("quick_gelu", False))


def test_every_listed_tag_is_built_with_its_weights_activation() -> None:
    """Every (architecture, tag) open_clip lists, and the `hf-hub:` id of its weights, resolved from
    the configs alone: what the tag's config says, else what the architecture's config says (e.g.
    `roberta-ViT-B-32/laion2b_s12b_b32k`, whose tag is silent and whose architecture is QuickGELU)."""
    from backends.open_clip_encoder import activation_kwargs

    checked, wrong = 0, []
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag)
        arch_cfg = open_clip.get_model_config(arch)
        if not cfg or arch_cfg is None:
            continue
        trained = cfg["quick_gelu"] if "quick_gelu" in cfg else arch_cfg.get("quick_gelu", False)
        specs = [f"{arch}/{tag}"] + ([f"{arch}/hf-hub:{cfg['hf_hub']}"] if cfg.get("hf_hub") else [])
        for spec in specs:
            checked += 1
            if _built_quick_gelu(arch, activation_kwargs(spec)) != bool(trained):
                wrong.append(spec)
    assert checked > 200
    assert wrong == []
    assert _built_quick_gelu("roberta-ViT-B-32", activation_kwargs("roberta-ViT-B-32/laion2b_s12b_b32k"))


def test_local_weights_are_keyed_by_their_content(tiny: tuple[str, torch.nn.Module], tmp_path: Path) -> None:
    """A checkpoint file or `local-dir:` folder retrained in place is a new encoder key, and a
    worker given the old key refuses the new weights instead of filing them under it."""
    from backends.registry import encoder_identity

    name, model = tiny
    model = copy.deepcopy(model)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)
    spec = f"open_clip:{name}/{ckpt}#quickgelu"
    first = encoder_identity(spec)
    assert first.startswith(f"open_clip:{name}/{ckpt}@sha256-") and first.endswith("#quickgelu")
    assert encoder_identity(spec) == first  # the same content, the same key
    assert load_encoder(first).dim == load_encoder(spec).dim  # the marked id loads the same weights

    with torch.no_grad():
        next(iter(model.parameters())).add_(1.0)
    torch.save(model.state_dict(), ckpt)  # retrained in place

    assert encoder_identity(spec) != first
    with pytest.raises(BadParameter, match="changed since this run was keyed"):
        registry._load_encoder.__wrapped__(first)
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "open_clip_pytorch_model.bin").write_bytes(ckpt.read_bytes())
    local = encoder_identity(f"open_clip:local-dir:{folder}")
    assert local.startswith(f"open_clip:local-dir:{folder}@sha256-")
    (folder / "extra.txt").write_text("edited")
    assert encoder_identity(f"open_clip:local-dir:{folder}") != local
