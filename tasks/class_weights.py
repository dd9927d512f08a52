"""Class weights W (one row per class) for a dataset and an encoder, in each of the paper's weightings.

`descriptions` needs CuPL-style class descriptions from a describer; they are cached like image
descriptions, so a second encoder reuses them. The formulas themselves live in `method.fusion`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from backends.base import Answer
from backends.registry import load_describer, load_encoder
from method.fusion import WEIGHTINGS, combine_texts, sum_weights
from method.prompts import (
    CLASS_DESCRIPTION_PROMPTS,
    SINGLE_TEMPLATE,
    class_description_prompts,
    clip_templates,
)
from storage.addresses import class_descriptions_shard, class_weights_shard
from storage.io import read_table
from storage.keys import Answerer
from storage.schemas import CLASS_DESCRIPTIONS, CLASS_WEIGHTS
from tasks.answers import ShardAnswers, answer_shard, describer_task
from tasks.cache import ShardResult, cached_shard
from tasks.progress import stage
from tasks.slots import MODEL_TAG, exclusive


@stage("class weights")
@describer_task("describe-classes")
def describe_classes(
    root: str, dataset: str, class_names: tuple[str, ...], answerer: Answerer
) -> ShardResult:
    """`answerer.class_samples` sampled descriptions per class and prompt (CuPL-style), each seeded by
    its prompt and index, so a sample asked again after a failure is the one it would have been."""
    items = [
        (c, p, s)
        for c in range(len(class_names))
        for p in range(len(CLASS_DESCRIPTION_PROMPTS))
        for s in range(answerer.class_samples)
    ]
    prompts = [class_description_prompts(name) for name in class_names]

    def ask(todo: list[int], shard: ShardAnswers) -> tuple[list[Answer], int]:
        asked = [items[i] for i in todo]
        describer = load_describer(answerer.describer, answerer.max_new_tokens, answerer.settings)
        with exclusive(describer) as passes:
            answers = describer.describe_classes(
                [prompts[c][p] for c, p, _ in asked],
                [s for *_, s in asked],
                [class_names[c] for c, *_ in asked],
                on_answer=shard.sink(todo),
            )
            spent = passes()
        return shard.settle(todo, answers), spent

    def rows(positions: list[int], answers: list[Answer]) -> pa.Table:
        table = [
            {
                "class_index": items[i][0],
                "class_name": class_names[items[i][0]],
                "prompt_index": items[i][1],
                "sample": items[i][2],
                "text": a.text,
                "latency_s": a.latency_s,
                "prompt_tokens": a.prompt_tokens,
                "completion_tokens": a.completion_tokens,
                "error": a.error,
                "truncated": a.truncated,
            }
            for i, a in zip(positions, answers, strict=True)
        ]
        return pa.Table.from_pylist(table, schema=CLASS_DESCRIPTIONS.schema())

    path = class_descriptions_shard(root, dataset, class_names, answerer)
    return answer_shard(path, answerer.describer, ["class_index", "prompt_index", "sample"], items, ask, rows)


def _class_texts(
    class_names: tuple[str, ...], texts: str, descriptions: ShardResult | None
) -> list[list[str]]:
    """Each class's texts of one kind (see `method.fusion.Weighting.texts`)."""
    if texts == "name":
        return [[c] for c in class_names]
    if texts == "template":
        return [[SINGLE_TEMPLATE.format(c=c)] for c in class_names]
    if texts == "templates":
        return [clip_templates(c) for c in class_names]
    if descriptions is None:
        raise ValueError("class descriptions need a describer")
    table = read_table(descriptions.path, columns=["class_index", "text"])
    found: list[list[str]] = [[] for _ in class_names]
    for index, text in zip(*(table.column(c).to_pylist() for c in ("class_index", "text")), strict=True):
        if text:
            found[index].append(text)
    # A class whose descriptions all failed falls back to its name rather than a zero vector.
    return [t or [c] for t, c in zip(found, class_names, strict=True)]


def _weights_table(
    class_names: tuple[str, ...], weights: np.ndarray, texts: list[int], cut: list[int]
) -> pa.Table:
    dim = weights.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1), pa.float32()), dim)
    return pa.table(
        {
            "class_index": pa.array(range(len(class_names)), pa.int64()),
            "class_name": list(class_names),
            "weight": column,
            "texts": pa.array(texts, pa.int64()),
            "truncated": pa.array(cut, pa.int64()),
        },
        schema=CLASS_WEIGHTS.schema(dim),
    )


def read_class_weights(path: str) -> np.ndarray:
    column = read_table(path, columns=["weight"]).column("weight").combine_chunks()
    return column.values.to_numpy().reshape(len(column), -1)


@stage("class weights")
@task(cache_policy=NO_CACHE, name="class-weights", tags=[MODEL_TAG])
def class_weights_task(
    root: str,
    dataset: str,
    class_names: tuple[str, ...],
    encoder_id: str,
    weighting: str,
    answerer: Answerer | None,
    descriptions: ShardResult | None = None,
    parts: Sequence[ShardResult] = (),
) -> ShardResult:
    """Compute (or find) one weighting, from the class `descriptions` when it is made from them;
    `sum` adds up its `parts`, the weightings `WEIGHTINGS[weighting].parts` in that order (their
    own tasks spent their forward passes)."""
    recipe = WEIGHTINGS[weighting]

    def compute():
        if recipe.combine == "sum":
            if len(parts) != len(recipe.parts):
                raise ValueError(f"{weighting} adds up {list(recipe.parts)}: pass their results")
            meta = [read_table(p.path, columns=["texts", "truncated"]) for p in parts]
            count = [np.sum([m.column(c).to_numpy() for m in meta], axis=0) for c in ("texts", "truncated")]
            weights = sum_weights([read_class_weights(p.path) for p in parts])
            return _weights_table(class_names, weights, count[0].tolist(), count[1].tolist()), 0
        per_class = _class_texts(class_names, recipe.texts, descriptions)
        encoder = load_encoder(encoder_id)
        with exclusive(encoder) as passes:
            embedded = encoder.encode_texts([t for texts in per_class for t in texts])
            spent = passes()
        bounds = np.cumsum([0] + [len(t) for t in per_class])
        groups = [embedded.vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        cut = [sum(embedded.truncated[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        weights = combine_texts(recipe, groups)
        return _weights_table(class_names, weights, [len(t) for t in per_class], cut), spent

    path = class_weights_shard(root, dataset, class_names, encoder_id, weighting, answerer)
    return cached_shard(path, compute)
