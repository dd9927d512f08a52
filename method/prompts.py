"""The paper's prompts, verbatim from "What Do You See?" (arXiv 2405.15668) and its authors' code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

DESCRIPTION_PROMPT = "What do you see? Describe any object precisely, including its type or class."

PREDICTION_PROMPT = (
    "You are given an image and a list of class labels. Classify the image given the class labels. "
    "Answer using a single word if possible. Here are the class labels: {classes}"
)

# CuPL-style class-description prompts (text only, several samples each).
CLASS_DESCRIPTION_PROMPTS = (
    "Describe what a {c} looks like in one or two sentences",
    "How can you identify a {c} in one or two sentences?",
    "What does a {c} look like? Respond with one or two sentences.",
    "Describe an image from the internet of a {c}. Respond with one or two sentences.",
    "A short caption of an image of a {c}:",
)

SINGLE_TEMPLATE = "A photo of {c}"


def prediction_prompt(class_names: Sequence[str]) -> str:
    return PREDICTION_PROMPT.format(classes=", ".join(class_names))


def class_description_prompts(class_name: str) -> list[str]:
    return [p.format(c=class_name) for p in CLASS_DESCRIPTION_PROMPTS]


def clip_templates(class_name: str) -> list[str]:
    """CLIP's 80 ImageNet prompt templates, as open_clip ships them."""
    return [t(class_name) for t in OPENAI_IMAGENET_TEMPLATES]


_HASHED: dict[str, str] = {}  # hash -> the JSON it was made from, for the run's `keys` lookup table


def content_hash(obj: object, length: int = 10) -> str:
    """Stable short hash of a JSON-able value: the cache key of prompts and settings."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:length]
    _HASHED.setdefault(digest, blob)
    return digest


def hashed_value(digest: str) -> str | None:
    """The JSON a `content_hash` made in this process stood for, or None."""
    return _HASHED.get(digest)


def image_prompts_hash() -> str:
    return content_hash([DESCRIPTION_PROMPT, PREDICTION_PROMPT])


def class_prompts_hash() -> str:
    return content_hash(list(CLASS_DESCRIPTION_PROMPTS))
