"""Classify one shard: fuse every combination of components and score it against one set of class weights.

Without an answerer (no describer) only the image alone is scored: plain zero-shot.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from method.fusion import combination_name, component_combinations, fuse, logits, normalize, top_k
from method.prompts import AnswerKind
from storage.addresses import predictions_shard
from storage.io import read_table
from storage.keys import Answerer
from storage.schemas import PREDICTIONS
from tasks.cache import ShardResult, cached_shard
from tasks.class_weights import read_class_weights
from tasks.plan import Shard
from tasks.progress import stage

TOP = 5


def embeddings_or_nan(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n, dim) float32 from a fixed-size-list column, NaN rows where the value is null."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = column.type.list_size
    vectors = column.values.to_numpy(zero_copy_only=False).reshape(len(column), dim).astype(np.float32)
    vectors[~column.is_valid().to_numpy(zero_copy_only=False)] = np.nan
    return vectors


def load_components(images: ShardResult, texts: dict[AnswerKind, ShardResult]) -> dict:
    """The shard's normalised image vectors and those of each kind of answer in `texts`, NaN rows
    where missing (the image vectors alone without an answerer)."""
    table = read_table(images.path)
    components = {"image": normalize(embeddings_or_nan(table.column("embedding")))}
    order = {image_id: i for i, image_id in enumerate(table.column("image_id").to_pylist())}
    for kind, embedded in texts.items():
        answers = read_table(embedded.path)
        vectors = np.full_like(components["image"], np.nan)
        vectors[[order[i] for i in answers.column("image_id").to_pylist()]] = normalize(
            embeddings_or_nan(answers.column("embedding"))
        )
        components[kind] = vectors
    return components


@stage("classify")
@task(cache_policy=NO_CACHE, name="classify")
def classify_shard(
    root: str,
    shard: Shard,
    encoder_id: str,
    answerer: Answerer | None,
    weighting: str,
    manifest: ShardResult,
    images: ShardResult,
    weights: ShardResult,
    texts: dict[AnswerKind, ShardResult],
) -> ShardResult:
    """Score the shard's `images` and its answers' embeddings `texts` by kind (none without an answerer),
    alone and fused, against the class `weights`; the labels come from its `manifest`."""
    path = predictions_shard(
        root, shard.selection, shard.class_names, encoder_id, answerer, weighting, shard.index
    )

    def compute():
        rows = read_table(manifest.path, columns=["image_id", "label"])
        components = load_components(images, texts)
        class_weights = read_class_weights(weights.path)
        columns: dict[str, list] = {"image_id": [], "label": [], "components": [], "top5": [], "scores": []}
        for combination in component_combinations() if answerer else [("image",)]:
            queries, valid = fuse(components, combination)
            classes, scores = top_k(logits(np.nan_to_num(queries), class_weights), TOP)
            columns["image_id"] += rows.column("image_id").to_pylist()
            columns["label"] += rows.column("label").to_pylist()
            columns["components"] += [combination_name(combination)] * len(valid)
            columns["top5"] += [c.tolist() if v else None for c, v in zip(classes, valid, strict=True)]
            columns["scores"] += [s.tolist() if v else None for s, v in zip(scores, valid, strict=True)]
        return pa.table(columns, schema=PREDICTIONS.schema()), 0

    return cached_shard(path, compute)
