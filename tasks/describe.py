"""Ask a describer about one shard of images: a free description, or an initial class guess.

The guess's prompt lists every class (the paper's setup) or, with a shortlist, only the top-k
classes of the image ranked by an encoder's image-only scores.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from backends.base import Answer
from backends.registry import load_describer
from method.fusion import SHORTLIST_WEIGHTING, logits, normalize, shortlist
from method.prompts import DESCRIPTION_PROMPT, prediction_prompt
from sources.images import decode_manifest
from storage.io import read_table
from storage.keys import AnswerSource
from storage.paths import shard_path
from storage.schemas import DESCRIPTIONS, IMAGE_EMBEDDINGS, MANIFEST
from tasks.cache import ShardResult, cached_shard, exclusive
from tasks.class_weights import class_weights_path, read_class_weights
from tasks.classify import embeddings_or_nan
from tasks.plan import Shard


def answers_table(image_ids: list[str], answers: list[Answer], classes: list[list[int]] | None) -> pa.Table:
    return pa.table(
        {
            "image_id": image_ids,
            "text": [a.text for a in answers],
            "latency_s": [a.latency_s for a in answers],
            "prompt_tokens": [a.prompt_tokens for a in answers],
            "completion_tokens": [a.completion_tokens for a in answers],
            "error": [a.error for a in answers],
            "classes": classes if classes is not None else [None] * len(answers),
        },
        schema=DESCRIPTIONS.schema(),
    )


def ask(root: str, shard: Shard, source: AnswerSource, ask_describer) -> tuple:
    """Decode the shard, let `ask_describer(describer, image_indices, images)` answer for the images
    that decoded, and record a decode error for the others."""
    manifest = read_table(shard_path(root, MANIFEST, shard.selection.keys(), shard.index))
    images, errors = decode_manifest(manifest)
    ok = [i for i, im in enumerate(images) if im is not None]
    describer = load_describer(source.describer, source.max_new_tokens)
    with exclusive(describer) as passes:
        got = ask_describer(describer, ok, [images[i] for i in ok]) if ok else []
        spent = passes()
    answers = [Answer(None, error=e) for e in errors]
    for i, answer in zip(ok, got, strict=True):
        answers[i] = answer
    return manifest.column("image_id").to_pylist(), answers, spent


@task(cache_policy=NO_CACHE, name="describe", tags=["gpu"], retries=2, retry_delay_seconds=5)
def describe_shard(root: str, shard: Shard, source: AnswerSource) -> ShardResult:
    keys = {**shard.selection.keys(), **source.answer_keys("description")}

    def compute():
        ids, answers, spent = ask(root, shard, source, lambda d, _, ims: d.describe(ims, DESCRIPTION_PROMPT))
        return answers_table(ids, answers, None), spent

    return cached_shard(shard_path(root, DESCRIPTIONS, keys, shard.index), compute)


def shortlisted_classes(root: str, shard: Shard, encoder_id: str, k: int) -> list[list[int]]:
    sel = shard.selection
    images = read_table(
        shard_path(root, IMAGE_EMBEDDINGS, {**sel.keys(), "encoder": encoder_id}, shard.index)
    )
    weights = read_class_weights(class_weights_path(root, sel.dataset, encoder_id, SHORTLIST_WEIGHTING, None))
    scores = logits(np.nan_to_num(normalize(embeddings_or_nan(images.column("embedding")))), weights)
    return shortlist(scores, k)


@task(cache_policy=NO_CACHE, name="predict", tags=["gpu"], retries=2, retry_delay_seconds=5)
def predict_shard(
    root: str, shard: Shard, source: AnswerSource, encoder_id: str | None = None
) -> ShardResult:
    """`encoder_id` ranks the shortlist; it is unused (and may be None) without one."""
    keys = {**shard.selection.keys(), **source.answer_keys("prediction", encoder_id)}
    names = shard.class_names

    def compute():
        listed = (
            shortlisted_classes(root, shard, encoder_id, source.shortlist)
            if source.shortlist
            else [list(range(len(names)))] * len(shard.rows)
        )

        def guess(describer, indices, images):
            class_lists = [[names[c] for c in listed[i]] for i in indices]
            return describer.predict(images, [prediction_prompt(c) for c in class_lists], class_lists)

        ids, answers, spent = ask(root, shard, source, guess)
        return answers_table(ids, answers, listed if source.shortlist else None), spent

    return cached_shard(shard_path(root, DESCRIPTIONS, keys, shard.index), compute)
