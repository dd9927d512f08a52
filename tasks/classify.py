"""Classify one shard: fuse every component subset and score it against one set of class weights.

Without an answer source (no describer) only the image-only subset is scored: plain zero-shot.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from method.fusion import component_subsets, fuse, logits, normalize, subset_name, top_k
from method.prompts import ANSWER_KINDS
from storage.addresses import (
    class_weights_shard,
    image_embeddings_shard,
    manifest_shard,
    predictions_shard,
    text_embeddings_shard,
)
from storage.io import read_table
from storage.keys import AnswerSource
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


def load_components(root: str, shard: Shard, encoder_id: str, source: AnswerSource | None) -> dict:
    """The shard's normalised image, description and prediction vectors, NaN rows where missing
    (the image vectors alone without a source)."""
    sel = shard.selection
    images = read_table(image_embeddings_shard(root, sel, encoder_id, shard.index))
    components = {"image": normalize(embeddings_or_nan(images.column("embedding")))}
    if source is None:
        return components
    order = {image_id: i for i, image_id in enumerate(images.column("image_id").to_pylist())}
    for kind in ANSWER_KINDS:
        texts = read_table(
            text_embeddings_shard(root, sel, shard.class_names, encoder_id, source, kind, shard.index)
        )
        vectors = np.full_like(components["image"], np.nan)
        vectors[[order[i] for i in texts.column("image_id").to_pylist()]] = normalize(
            embeddings_or_nan(texts.column("embedding"))
        )
        components[kind] = vectors
    return components


@stage("classify")
@task(cache_policy=NO_CACHE, name="classify")
def classify_shard(
    root: str, shard: Shard, encoder_id: str, source: AnswerSource | None, weighting: str
) -> ShardResult:
    sel = shard.selection
    names = shard.class_names
    path = predictions_shard(root, sel, names, encoder_id, source, weighting, shard.index)

    def compute():
        manifest = read_table(manifest_shard(root, sel, shard.index), columns=["image_id", "label"])
        components = load_components(root, shard, encoder_id, source)
        weights = read_class_weights(
            class_weights_shard(root, sel.dataset, names, encoder_id, weighting, source)
        )
        columns: dict[str, list] = {"image_id": [], "label": [], "components": [], "top5": [], "scores": []}
        for subset in component_subsets() if source else [("image",)]:
            queries, valid = fuse(components, subset)
            classes, scores = top_k(logits(np.nan_to_num(queries), weights), TOP)
            columns["image_id"] += manifest.column("image_id").to_pylist()
            columns["label"] += manifest.column("label").to_pylist()
            columns["components"] += [subset_name(subset)] * len(valid)
            columns["top5"] += [c.tolist() if v else None for c, v in zip(classes, valid, strict=True)]
            columns["scores"] += [s.tolist() if v else None for s, v in zip(scores, valid, strict=True)]
        return pa.table(columns, schema=PREDICTIONS.schema()), 0

    return cached_shard(path, compute)
