"""Classify one shard: fuse every component subset and score it against one set of class weights.

Without an answer source (no describer) only the image-only subset is scored: plain zero-shot.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from method.fusion import component_subsets, fuse, logits, normalize, subset_name, top_k
from storage.io import read_table
from storage.keys import IMAGE_ONLY_RUN, AnswerSource
from storage.paths import shard_path
from storage.schemas import IMAGE_EMBEDDINGS, MANIFEST, PREDICTIONS, TEXT_EMBEDDINGS
from tasks.cache import ShardResult, cached_shard
from tasks.class_weights import NEEDS_DESCRIPTIONS, class_weights_path, read_class_weights
from tasks.plan import Shard

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
    images = read_table(
        shard_path(root, IMAGE_EMBEDDINGS, {**sel.keys(), "encoder": encoder_id}, shard.index)
    )
    components = {"image": normalize(embeddings_or_nan(images.column("embedding")))}
    if source is None:
        return components
    order = {image_id: i for i, image_id in enumerate(images.column("image_id").to_pylist())}
    for kind in ("description", "prediction"):
        keys = {**sel.keys(), "encoder": encoder_id, **source.answer_keys(kind, encoder_id)}
        texts = read_table(shard_path(root, TEXT_EMBEDDINGS, keys, shard.index))
        vectors = np.full_like(components["image"], np.nan)
        vectors[[order[i] for i in texts.column("image_id").to_pylist()]] = normalize(
            embeddings_or_nan(texts.column("embedding"))
        )
        components[kind] = vectors
    return components


@task(cache_policy=NO_CACHE, name="classify")
def classify_shard(
    root: str, shard: Shard, encoder_id: str, source: AnswerSource | None, weighting: str
) -> ShardResult:
    sel = shard.selection
    answers = source.run_keys() if source else IMAGE_ONLY_RUN
    keys = {**sel.keys(), "encoder": encoder_id, **answers, "class_weights": weighting}
    path = shard_path(root, PREDICTIONS, keys, shard.index)

    def compute():
        manifest = read_table(
            shard_path(root, MANIFEST, sel.keys(), shard.index), columns=["image_id", "label"]
        )
        components = load_components(root, shard, encoder_id, source)
        weights = read_class_weights(
            class_weights_path(
                root, sel.dataset, encoder_id, weighting, source if weighting in NEEDS_DESCRIPTIONS else None
            )
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
