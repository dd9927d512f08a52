"""The prompts (docs/protocol.md says where each comes from).

The description and initial-prediction prompts are the paper's ("What Do You See?", arXiv
2405.15668), as transcribed from its text; the authors' repository holds no prompts. The class-
description prompts are CuPL's base prompts (Pratt et al., 2023) with a length instruction chosen
here. Their hashes are part of the cache key: changing a prompt recomputes what depends on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Literal, get_args

DESCRIPTION_PROMPT = "What do you see? Describe any object precisely, including its type or class."

GUESS_PROMPT = (
    "You are given an image and a list of class labels. Classify the image given the class labels. "
    "Answer using a single word if possible. Here are the class labels: {classes}"
)

# The two kinds of answer a describer gives about an image, and the prompt that asks for each. The
# guess is stored under the kind "prediction" (a stored value: renaming it would orphan cached answers).
AnswerKind = Literal["description", "prediction"]
ANSWER_KINDS: tuple[AnswerKind, ...] = get_args(AnswerKind)
PROMPT_OF_KIND: dict[AnswerKind, str] = {"description": DESCRIPTION_PROMPT, "prediction": GUESS_PROMPT}

# CuPL's five ImageNet base prompts (text only, several samples each), reworded where docs/protocol.md
# says: always "a", a length instruction, "A short caption".
CLASS_DESCRIPTION_PROMPTS = (
    "Describe what a {c} looks like in one or two sentences",
    "How can you identify a {c} in one or two sentences?",
    "What does a {c} look like? Respond with one or two sentences.",
    "Describe an image from the internet of a {c}. Respond with one or two sentences.",
    "A short caption of an image of a {c}:",
)

# 50 class descriptions per class, as CuPL samples them for ImageNet: 10 of each of its 5 prompts.
CLASS_DESCRIPTIONS_PER_CLASS = 50
# The answers' generation length: CLIP's text context is 77 tokens, so more would be cut anyway
# (docs/protocol.md). Every default of `max_new_tokens` is this one.
MAX_NEW_TOKENS = 77

SINGLE_TEMPLATE = "A photo of {c}"


def guess_prompt(class_names: Sequence[str]) -> str:
    return GUESS_PROMPT.format(classes=", ".join(class_names))


def class_description_prompts(class_name: str) -> list[str]:
    return [p.format(c=class_name) for p in CLASS_DESCRIPTION_PROMPTS]


def clip_templates(class_name: str) -> list[str]:
    """CLIP's 80 ImageNet prompt templates, as open_clip ships them (imported here, not with this
    module: importing open_clip imports torch, which a query or a cached run must not wait for)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

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
    return content_hash([DESCRIPTION_PROMPT, GUESS_PROMPT])


def class_prompts_hash() -> str:
    return content_hash(list(CLASS_DESCRIPTION_PROMPTS))
