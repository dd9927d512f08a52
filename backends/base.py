"""The two small interfaces every model backend implements.

Tasks only ever talk to an `Encoder` or a `Describer`; which concrete backend sits behind one
is decided by its model id (see `backends.registry`). Both are batched: a call takes a whole
shard's worth of inputs and the backend batches internally as suits its hardware.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Answer:
    """One answer of a describer, with what it cost. `text` is None when `error` is set."""

    text: str | None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class TextEmbeddings:
    """Unnormalised text embeddings plus which inputs the tokenizer had to cut to fit the context."""

    vectors: np.ndarray  # (n, dim) float32
    truncated: list[bool] = field(default_factory=list)


@runtime_checkable
class Encoder(Protocol):
    """A joint image-text embedding model (CLIP-like)."""

    model_id: str
    dim: int
    context_length: int
    forward_passes: int  # batches run through the model since load; the cache tests count these

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, not normalised."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        """Texts longer than the context are truncated by the model's own tokenizer and flagged."""
        ...


@runtime_checkable
class Describer(Protocol):
    """A multimodal LLM (or a stand-in) that answers prompts about images and about class names."""

    model_id: str
    forward_passes: int

    def settings(self) -> dict[str, object]:
        """Generation settings that change the answers; they become part of the cache key."""
        ...

    def describe(self, images: Sequence[Image.Image], prompt: str) -> list[Answer]:
        """Free-text description of each image."""
        ...

    def predict(
        self, images: Sequence[Image.Image], prompts: Sequence[str], class_names: Sequence[Sequence[str]]
    ) -> list[Answer]:
        """Initial class guess per image, with a prompt per image (a shortlist lists different
        classes for each); `prompts[i]` already lists `class_names[i]` (backends that read prompts
        ignore the lists, stand-ins that cannot read prompts use them)."""
        ...

    def describe_classes(
        self, prompts: Sequence[str], samples: int, class_names: Sequence[str] = ()
    ) -> list[list[Answer]]:
        """Text-only answers, `samples` per prompt (CuPL-style class descriptions); `class_names[i]`
        is the class that `prompts[i]` asks about (ignored by backends that read the prompt)."""
        ...
