"""CLIP-like encoders through open_clip: built-in architectures with a tag or checkpoint file,
self-describing `local-dir:` folders and `hf-hub:` repos.

Every model is built the way its weights were trained. OpenAI's CLIP weights (every `openai` tag,
and any tag whose pretrained config says `quick_gelu`) were trained with QuickGELU, while open_clip
builds the plain architecture names with GELU and only warns about the mismatch; the resulting
baseline is not the published one. So the activation follows the weights: the tag's pretrained
config, the tag an `hf-hub:` weight id belongs to, or the folder's own config; a local checkpoint
file follows its architecture name (`ViT-B-32-quickgelu` for OpenAI's weights). A suffix forces
either: `open_clip:ViT-B-32/openai#gelu`, `open_clip:ViT-B-32//ckpt.pt#quickgelu`.

Runs in float32 on whatever `pick_device()` gives, so embeddings do not depend on the dtype a GPU
happens to support.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.pretrained import download_pretrained_from_hf
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from backends.base import TextEmbeddings
from backends.device import pick_device

_SCHEMES = ("local-dir:", "hf-hub:")
ACTIVATIONS = {"quickgelu": True, "gelu": False}  # the `#` suffix that forces an activation


def split_activation(spec: str) -> tuple[str, bool | None]:
    """`spec#quickgelu` / `spec#gelu` -> (spec, forced quick_gelu); no suffix -> (spec, None)."""
    base, sep, suffix = spec.rpartition("#")
    if not sep:
        return spec, None
    if suffix not in ACTIVATIONS:
        raise ValueError(f"open_clip spec {spec!r}: unknown activation {suffix!r}; use #quickgelu or #gelu")
    return base, ACTIVATIONS[suffix]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`<arch>/<pretrained>` split at the first '/', or a whole `local-dir:`/`hf-hub:` model name
    (an activation suffix is not part of either)."""
    spec, _ = split_activation(spec)
    if spec.startswith(_SCHEMES):
        return spec, None
    arch, _, pretrained = spec.partition("/")
    if not arch or not pretrained:
        raise ValueError(
            f"open_clip spec {spec!r} needs '<arch>/<pretrained tag or checkpoint>', 'local-dir:<dir>' "
            "or 'hf-hub:<repo>'; refusing to run an architecture with random weights"
        )
    return arch, pretrained


def trained_quick_gelu(arch: str, pretrained: str | None) -> bool | None:
    """Whether the weights were trained with QuickGELU, from what open_clip knows of them: a tag's
    pretrained config, or the tag whose hub weights an `hf-hub:` id names. None when unknown (a
    local file, a folder or hub repo that carries its own config): the architecture decides."""
    if pretrained is None:
        return None
    if pretrained.startswith("hf-hub:"):
        wanted = pretrained.removeprefix("hf-hub:").strip("/")
        for tag in open_clip.list_pretrained_tags_by_model(arch):
            cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag)
            if cfg.get("hf_hub", "").strip("/") == wanted:
                return bool(cfg.get("quick_gelu", False))
        return None
    cfg = open_clip.pretrained.get_pretrained_cfg(arch, pretrained)
    return bool(cfg.get("quick_gelu", False)) if cfg else None


def activation_kwargs(spec: str) -> dict[str, bool]:
    """The `create_model_and_transforms` arguments that build the activation the weights need."""
    base, forced = split_activation(spec)
    arch, pretrained = parse_spec(base)
    quick = forced if forced is not None else trained_quick_gelu(arch, pretrained)
    if quick is None:
        return {}
    return {"force_quick_gelu": True} if quick else {"quick_gelu": False}


def _resolve_pretrained(pretrained: str) -> str:
    """open_clip takes only tags and file paths as `pretrained`; fetch an `hf-hub:` weight file first."""
    if pretrained.startswith("hf-hub:"):
        return download_pretrained_from_hf(pretrained.removeprefix("hf-hub:"))
    return pretrained


def _token_count(tokenizer: Any, text: str) -> int | None:
    """Tokens the model's own tokenizer makes of `text`, start/end included; None when unknown."""
    if isinstance(tokenizer, SimpleTokenizer):
        return len(tokenizer.encode(text)) + 2  # encode() leaves out sot/eot
    hf = getattr(tokenizer, "tokenizer", None)  # HFTokenizer and SigLipTokenizer wrap a transformers one
    if hf is None:
        return None
    clean: Callable[[str], str] = getattr(tokenizer, "clean_fn", lambda t: t)
    return len(hf(clean(text), add_special_tokens=True, truncation=False, verbose=False)["input_ids"])


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class OpenClipEncoder:
    """An open_clip model behind the `Encoder` interface."""

    def __init__(
        self,
        model_id: str,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Any,
        device: torch.device,
        batch_size: int = 64,
    ) -> None:
        self.model_id = model_id
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.context_length: int = int(getattr(tokenizer, "context_length", None) or model.context_length)
        self.dim = self._probe_dim()
        self.forward_passes = 0

    @classmethod
    def load(cls, spec: str, batch_size: int = 64) -> OpenClipEncoder:
        name, pretrained = parse_spec(spec)
        device = pick_device()
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=_resolve_pretrained(pretrained) if pretrained else None,
            device=device,
            **activation_kwargs(spec),
        )
        tokenizer = open_clip.get_tokenizer(name)
        return cls("open_clip:" + spec, model, preprocess, tokenizer, device, batch_size=batch_size)

    @torch.inference_mode()
    def _probe_dim(self) -> int:
        """The embedding width, read off one text forward: model classes do not agree on an attribute."""
        return int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[-1])

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for part in _batches(len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images[part]])
            out.append(self.model.encode_image(pixels.to(self.device)).float().cpu().numpy())
            self.forward_passes += 1
        return np.concatenate(out).astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        out = [np.zeros((0, self.dim), np.float32)]
        for part in _batches(len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[part])).to(self.device)
            out.append(self.model.encode_text(tokens).float().cpu().numpy())
            self.forward_passes += 1
        truncated = [(_token_count(self.tokenizer, t) or 0) > self.context_length for t in texts]
        return TextEmbeddings(np.concatenate(out).astype(np.float32, copy=False), truncated)
