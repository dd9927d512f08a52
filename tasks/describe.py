"""Ask a describer about one shard of images: a free description and an initial class guess."""

from __future__ import annotations

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from backends.base import Answer
from backends.registry import load_describer
from method.prompts import DESCRIPTION_PROMPT, prediction_prompt
from sources.images import decode_manifest
from storage.io import read_table
from storage.keys import AnswerSource
from storage.paths import shard_path
from storage.schemas import DESCRIPTIONS, MANIFEST
from tasks.cache import ShardResult, cached_shard, exclusive
from tasks.plan import ShardPlan

KINDS = ("description", "prediction")


def answers_table(image_ids: list[str], answers: dict[str, list[Answer]]) -> pa.Table:
    rows = [
        {
            "image_id": image_id,
            "kind": kind,
            "text": a.text,
            "latency_s": a.latency_s,
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "error": a.error,
        }
        for kind in KINDS
        for image_id, a in zip(image_ids, answers[kind], strict=True)
    ]
    return pa.Table.from_pylist(rows, schema=DESCRIPTIONS.schema())


@task(cache_policy=NO_CACHE, name="describe", tags=["gpu"], retries=2, retry_delay_seconds=5)
def describe_shard(root: str, plan: ShardPlan, shard: int, source: AnswerSource) -> ShardResult:
    sel = plan.selection
    path = shard_path(root, DESCRIPTIONS, {**sel.keys(), **source.image_keys()}, shard)

    def compute():
        manifest = read_table(shard_path(root, MANIFEST, sel.keys(), shard))
        images, errors = decode_manifest(manifest)
        ok = [i for i, im in enumerate(images) if im is not None]
        good = [images[i] for i in ok]
        describer = load_describer(source.describer, source.max_new_tokens)
        with exclusive(describer) as passes:
            got = {
                "description": describer.describe(good, DESCRIPTION_PROMPT),
                "prediction": describer.predict(good, prediction_prompt(plan.class_names), plan.class_names),
            }
            spent = passes()
        answers = {kind: [Answer(None, error=e) for e in errors] for kind in KINDS}
        for kind in KINDS:
            for i, answer in zip(ok, got[kind], strict=True):
                answers[kind][i] = answer
        return answers_table(manifest.column("image_id").to_pylist(), answers), spent

    return cached_shard(path, compute)
