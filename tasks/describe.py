"""Ask a describer about one shard of images: a free description, or an initial class guess.

The guess's prompt lists every class (the paper's setup) or, with a shortlist, only the top-k
classes of the image ranked by an encoder's image-only scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from PIL import Image

from backends.base import Answer, Describer
from backends.registry import default_class_samples, describer_settings, load_describer
from method.fusion import logits, normalize, shortlist
from method.prompts import DESCRIPTION_PROMPT, guess_prompt
from sources.images import decode_manifest
from storage.addresses import answers_shard
from storage.io import exists, read_table
from storage.keys import Answerer
from storage.schemas import DESCRIPTIONS
from tasks.answers import ShardAnswers, Sink, answer_shard, describer_task
from tasks.cache import ShardResult
from tasks.class_weights import read_class_weights
from tasks.classify import embeddings_or_nan
from tasks.plan import Shard
from tasks.progress import stage
from tasks.slots import exclusive


def answerer_for(
    describer: str, max_new_tokens: int, class_samples: int | None, shortlist: int | None
) -> Answerer:
    """The cache identity of a describer's answers, found without loading it."""
    settings = json.dumps(describer_settings(describer, max_new_tokens), sort_keys=True)
    samples = class_samples or default_class_samples(describer)
    return Answerer(describer, settings, max_new_tokens, samples, shortlist)


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
            "truncated": [a.truncated for a in answers],
        },
        schema=DESCRIPTIONS.schema(),
    )


AskDescriber = Callable[[Describer, list[int], list[Image.Image], Sink], list[Answer]]


def answer_images(
    manifest: ShardResult, answerer: Answerer, path: str, ask_describer: AskDescriber, classes=None
) -> ShardResult:
    """The shard of answers at `path`: decode the images of the shard's `manifest`, let
    `ask_describer(describer, image_indices, images, on_answer)` answer the ones that decoded and
    are not answered yet (handing each answer to `on_answer` as it arrives), and record a decode
    error for the others. `classes[i]` is what a shortlisted prompt listed for image i."""
    table = read_table(manifest.path)
    ids = table.column("image_id").to_pylist()

    def ask(todo: list[int], shard: ShardAnswers) -> tuple[list[Answer], int]:
        images, errors = decode_manifest(table.take(todo))
        decoded = {j: im for j, im in enumerate(images) if im is not None}
        ok = list(decoded)
        answers = [Answer(None, error=e) for e in errors]
        if not ok:
            return answers, 0
        describer = load_describer(answerer.describer, answerer.max_new_tokens, answerer.settings)
        positions = [todo[j] for j in ok]
        with exclusive(describer) as passes:
            got = ask_describer(describer, positions, list(decoded.values()), shard.sink(positions))
            spent = passes()
        for j, answer in zip(ok, shard.settle(positions, got), strict=True):
            answers[j] = answer
        return answers, spent

    def rows(positions: list[int], answers: list[Answer]) -> pa.Table:
        listed = [classes[i] for i in positions] if classes is not None else None
        return answers_table([ids[i] for i in positions], answers, listed)

    return answer_shard(path, answerer.describer, ["image_id"], ids, ask, rows)


@stage("describe")
@describer_task("describe")
def describe_shard(root: str, shard: Shard, answerer: Answerer, manifest: ShardResult) -> ShardResult:
    path = answers_shard(root, shard.selection, shard.class_names, answerer, "description", shard.index)
    return answer_images(
        manifest, answerer, path, lambda d, _, ims, sink: d.describe(ims, DESCRIPTION_PROMPT, on_answer=sink)
    )


def shortlisted_classes(images: ShardResult, ranking: ShardResult, k: int) -> list[list[int]]:
    """Each image's top `k` classes by its image embedding (`images`) against the class weights that
    rank them (`ranking`)."""
    embeddings = read_table(images.path).column("embedding")
    scores = logits(np.nan_to_num(normalize(embeddings_or_nan(embeddings))), read_class_weights(ranking.path))
    return shortlist(scores, k)


@stage("describe")
@describer_task("guess")
def guess_shard(
    root: str,
    shard: Shard,
    answerer: Answerer,
    manifest: ShardResult,
    encoder_id: str | None = None,
    images: ShardResult | None = None,
    ranking: ShardResult | None = None,
) -> ShardResult:
    """A shortlist is ranked by the encoder `encoder_id`: its embeddings of the shard's `images`
    against its class weights `ranking` (`SHORTLIST_WEIGHTING`); all three are unused (and may be
    None) without one."""
    names = shard.class_names
    path = answers_shard(root, shard.selection, names, answerer, "prediction", shard.index, encoder_id)
    if exists(path):
        return ShardResult(path, computed=False)
    if not answerer.shortlist:
        listed = [list(range(len(names)))] * len(shard.rows)
    elif encoder_id is None or images is None or ranking is None:
        raise ValueError(
            "a shortlist is ranked by an encoder's image embeddings and class weights: pass them"
        )
    else:
        listed = shortlisted_classes(images, ranking, answerer.shortlist)

    def guess(
        describer: Describer, indices: list[int], images: list[Image.Image], sink: Sink
    ) -> list[Answer]:
        class_lists = [[names[c] for c in listed[i]] for i in indices]
        prompts = [guess_prompt(c) for c in class_lists]
        return describer.guess(images, prompts, class_lists, on_answer=sink)

    return answer_images(manifest, answerer, path, guess, listed if answerer.shortlist else None)
