"""CLIP-like encoders through open_clip: built-in architectures with a tag or checkpoint file,
self-describing `local-dir:` folders and `hf-hub:` repos.

Every model is built the way its weights were trained. OpenAI's CLIP weights (every `openai` tag,
and any tag whose pretrained config says `quick_gelu`) were trained with QuickGELU, while open_clip
builds the plain architecture names with GELU and only warns about the mismatch; the resulting
baseline is not the published one. So the activation follows the weights: the tag's pretrained
config (where it is silent, the architecture's config), the tag an `hf-hub:` weight id belongs to,
or the folder's own config; a local checkpoint
file follows its architecture name (`ViT-B-32-quickgelu` for OpenAI's weights). A suffix forces
either: `open_clip:ViT-B-32/openai#gelu`, `open_clip:ViT-B-32//ckpt.pt#quickgelu`.

Precision is part of the encoder's identity (and so of every cache key holding its outputs):
`open_clip:ViT-B-32/openai+amp-bf16` runs under bf16 autocast, `+amp-fp16` under fp16 autocast, and
no suffix (or `+fp32`) in float32, so embeddings of different precision never mix. `identity()` is
the hook the flow calls once per encoder id: with $WDYS_CLIP_PRECISION `auto` (the default) it adds
autocast on CUDA (bf16 where the GPU supports it, else fp16), as CLIP_benchmark does, and keeps
float32 elsewhere (the CPU's ids and results are what they were); `fp32` switches autocast off, and
`amp-bf16` / `amp-fp16` ask for it anywhere. An explicit suffix in the id wins over the variable.

Images are preprocessed by `prepare_images`, which tasks call before taking the model lock (so one
shard's preprocessing overlaps another's forward passes); given images instead, `encode_images`
preprocesses the next batch on a helper thread while the model runs the current one. On CUDA the
pixels are pinned and copied without blocking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.pretrained import download_pretrained_from_hf
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from backends.base import TextEmbeddings
from backends.content import content_hash
from backends.device import pick_device
from core import settings
from core.errors import BadParameter

_SCHEMES = ("local-dir:", "hf-hub:")
ACTIVATIONS = {"quickgelu": True, "gelu": False}  # the `#` suffix that forces an activation
PRECISIONS = {"fp32": None, "amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}  # the `+` suffix
PRECISION_ENV = settings.CLIP_PRECISION.name
CONTENT_MARK = "@sha256-"  # what follows a local checkpoint's or folder's path: its content hash


def split_precision(spec: str) -> tuple[str, str]:
    """`spec+amp-bf16` -> (spec, 'amp-bf16'); no known suffix -> (spec, 'fp32')."""
    base, sep, suffix = spec.rpartition("+")
    if sep and suffix in PRECISIONS:
        return base, suffix
    return spec, "fp32"


def default_precision(device: torch.device) -> str:
    """What $WDYS_CLIP_PRECISION asks for on `device`: `auto` autocasts on CUDA only."""
    wanted = settings.CLIP_PRECISION.text().lower()
    if wanted != "auto":
        if wanted not in PRECISIONS:
            raise BadParameter(f"{PRECISION_ENV} must be auto, {', '.join(PRECISIONS)}; not {wanted!r}")
        return wanted
    if device.type != "cuda":
        return "fp32"
    return "amp-bf16" if torch.cuda.is_bf16_supported() else "amp-fp16"


def identity(spec: str) -> str:
    """The spec with the precision it will run at (the cache identity): an explicit suffix, else
    $WDYS_CLIP_PRECISION on this machine's device. float32 carries no suffix, so float32 results
    keep the keys they always had."""
    base, precision = split_precision(spec)
    if not spec.endswith("+" + precision):
        precision = default_precision(pick_device())
    return base if precision == "fp32" else f"{base}+{precision}"


def split_activation(spec: str) -> tuple[str, bool | None]:
    """`spec#quickgelu` / `spec#gelu` -> (spec, forced quick_gelu); no suffix -> (spec, None)."""
    base, sep, suffix = spec.rpartition("#")
    if not sep:
        return spec, None
    if suffix not in ACTIVATIONS:
        raise ValueError(f"open_clip spec {spec!r}: unknown activation {suffix!r}; use #quickgelu or #gelu")
    return base, ACTIVATIONS[suffix]


def split_content(spec: str) -> tuple[str, str | None]:
    """`<weights>@sha256-<12 hex>` -> (`<weights>`, the digest); no mark -> (spec, None)."""
    base, sep, digest = spec.rpartition(CONTENT_MARK)
    if sep and len(digest) == 12 and all(c in "0123456789abcdef" for c in digest):
        return base, digest
    return spec, None


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`<arch>/<pretrained>` split at the first '/', or a whole `local-dir:`/`hf-hub:` model name
    (an activation, precision or content suffix is not part of either)."""
    spec, _ = split_content(split_activation(split_precision(spec)[0])[0])
    if spec.startswith(_SCHEMES):
        return spec, None
    arch, _, pretrained = spec.partition("/")
    if not arch or not pretrained:
        raise ValueError(
            f"open_clip spec {spec!r} needs '<arch>/<pretrained tag or checkpoint>', 'local-dir:<dir>' "
            "or 'hf-hub:<repo>'; refusing to run an architecture with random weights"
        )
    return arch, pretrained


def _tag_quick_gelu(arch: str, cfg: dict) -> bool:
    """What a tag's pretrained config says; where it says nothing, the architecture's own config
    decides (`roberta-ViT-B-32/laion2b_s12b_b32k`: a silent tag on a QuickGELU architecture)."""
    if "quick_gelu" in cfg:
        return bool(cfg["quick_gelu"])
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def local_weights(spec: str) -> Path | None:
    """The checkpoint file or `local-dir:` folder a spec loads, or None (a tag, an `hf-hub:` id)."""
    arch, pretrained = parse_spec(spec)
    if pretrained is None:
        return Path(arch.removeprefix("local-dir:")) if arch.startswith("local-dir:") else None
    return Path(pretrained) if not pretrained.startswith("hf-hub:") and Path(pretrained).is_file() else None


def _weights_digest(path: Path) -> str:
    return content_hash(path).removeprefix("sha256:")[:12]


def with_content(spec: str) -> str:
    """The spec with its local weights' content hash after their path (`ViT-B-32//w.pt@sha256-<12
    hex>#gelu+amp-bf16`): the cache identity of weights that live at a path, so that a checkpoint
    or folder retrained in place is a new key. Tags and hub ids are unchanged."""
    path = local_weights(spec)
    if path is None:
        return spec
    rest = split_precision(spec)[0]
    core = split_activation(rest)[0]
    precision, activation = spec[len(rest) :], rest[len(core) :]
    return f"{split_content(core)[0]}{CONTENT_MARK}{_weights_digest(path)}{activation}{precision}"


def check_content(spec: str) -> None:
    """Refuses weights that changed since the run's key named their content (`with_content`)."""
    digest = split_content(split_activation(split_precision(spec)[0])[0])[1]
    path = local_weights(spec)
    if digest is not None and path is not None and _weights_digest(path) != digest:
        raise BadParameter(
            f"open_clip weights {str(path)!r} changed since this run was keyed ({digest} -> "
            f"{_weights_digest(path)}); nothing is stored: run the flow again to key the new weights"
        )


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
                return _tag_quick_gelu(arch, cfg)
        return None
    cfg = open_clip.pretrained.get_pretrained_cfg(arch, pretrained)
    return _tag_quick_gelu(arch, cfg) if cfg else None


def activation_kwargs(spec: str) -> dict[str, bool]:
    """The `create_model_and_transforms` arguments that build the activation the weights need."""
    base, forced = split_activation(split_precision(spec)[0])
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


def text_features(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, run on the positions up to the batch's last end-of-text token.

    In open_clip's CLIP text tower every position attends only to those before it, and the features
    are read at the end-of-text token (the largest id), so the padding after it changes nothing:
    template prompts end by token 12 of 77, and CIFAR-10's 800 took 4.6 s instead of 35 s on two
    cores, the same embeddings within 4e-6 (docs/BENCHMARKS.md). Other text towers (pooled at
    another position, not causal, or a Hugging Face model) run whole."""
    if not (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    ):
        return model.encode_text(tokens)
    used = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :used]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:used].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:used, :used]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


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
        precision: str = "fp32",
    ) -> None:
        self.model_id = model_id
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.context_length: int = int(getattr(tokenizer, "context_length", None) or model.context_length)
        self.dim = self._probe_dim()
        self.forward_passes = 0

    @classmethod
    def load(cls, spec: str, batch_size: int = 64) -> OpenClipEncoder:
        """Runs at the precision the spec's suffix names (float32 without one), on the weights whose
        content the spec's content mark names, if it has one."""
        check_content(spec)
        name, pretrained = parse_spec(spec)
        device = pick_device()
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=_resolve_pretrained(pretrained) if pretrained else None,
            device=device,
            **activation_kwargs(spec),
        )
        tokenizer = open_clip.get_tokenizer(name)
        precision = split_precision(spec)[1]
        return cls("open_clip:" + spec, model, preprocess, tokenizer, device, batch_size, precision)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    @torch.inference_mode()
    def _probe_dim(self) -> int:
        """The embedding width, read off one text forward: model classes do not agree on an attribute."""
        return int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[-1])

    def prepare_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's input for `images`, made on the calling thread without the model: tasks call
        it before taking the model lock. Pinned on CUDA, so the copy to the GPU does not block."""
        if not images:
            return torch.zeros((0, 0))
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images])
        return pixels.pin_memory() if self.device.type == "cuda" else pixels

    def _pixel_batches(self, images: Sequence[Image.Image] | torch.Tensor) -> Iterator[torch.Tensor]:
        """Batches of model input; from images, the next batch is prepared while this one runs."""
        parts = _batches(len(images), self.batch_size)
        if isinstance(images, torch.Tensor):
            yield from (images[part] for part in parts)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="clip-preprocess") as pool:
            ahead: Future[torch.Tensor] | None = None
            for part in parts:
                following = pool.submit(self.prepare_images, images[part])
                if ahead is not None:
                    yield ahead.result()
                ahead = following
            if ahead is not None:
                yield ahead.result()

    def _stack(self, outputs: list[torch.Tensor]) -> np.ndarray:
        """One copy back (and one wait for the GPU) per call, not one per batch."""
        if not outputs:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(outputs).float().cpu().numpy().astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """Images, or what `prepare_images` made of them."""
        out = []
        for pixels in self._pixel_batches(images):
            with self._autocast():
                out.append(self.model.encode_image(pixels.to(self.device, non_blocking=True)).float())
            self.forward_passes += 1
        return self._stack(out)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        out = []
        for part in _batches(len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[part])).to(self.device, non_blocking=True)
            with self._autocast():
                out.append(text_features(self.model, tokens).float())
            self.forward_passes += 1
        truncated = [(_token_count(self.tokenizer, t) or 0) > self.context_length for t in texts]
        return TextEmbeddings(self._stack(out), truncated)
