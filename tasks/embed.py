"""Embed one shard with an encoder: its images, or the describer's answers about them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from backends.registry import load_encoder
from method.prompts import AnswerKind
from sources.images import decode_manifest
from storage.addresses import image_embeddings_shard, text_embeddings_shard
from storage.io import read_table
from storage.keys import Answerer
from storage.schemas import IMAGE_EMBEDDINGS, TEXT_EMBEDDINGS
from tasks.cache import ShardResult, cached_image_rows
from tasks.plan import Shard
from tasks.progress import stage
from tasks.slots import MODEL_TAG, exclusive


def embedding_column(vectors: np.ndarray | None, present: list[bool], dim: int) -> pa.Array:
    """A fixed-size-list column with null where `present` is False."""
    flat = np.zeros((len(present), dim), np.float32)
    if vectors is not None and len(vectors):
        flat[np.flatnonzero(present)] = vectors
    values = pa.array(flat.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array([not p for p in present]))


def image_ids(shard: ShardResult) -> list[str]:
    """The image ids of an upstream shard, in row order (its other columns are not read)."""
    return read_table(shard.path, columns=["image_id"]).column("image_id").to_pylist()


@stage("embed")
@task(cache_policy=NO_CACHE, name="embed-images", tags=[MODEL_TAG])
def embed_images_shard(root: str, shard: Shard, encoder_id: str, manifest: ShardResult) -> ShardResult:
    """Embed the images of the shard's `manifest` (ingest's result) that no other selection of the
    split embedded with this encoder."""
    path = image_embeddings_shard(root, shard.selection, encoder_id, shard.index)

    def compute(todo: list[int]):
        rows = read_table(manifest.path).take(todo)
        images, errors = decode_manifest(rows)
        encoder = load_encoder(encoder_id)
        present = [im is not None for im in images]
        pixels = [im for im in images if im is not None]
        if hasattr(encoder, "prepare_images"):  # preprocess outside the lock, beside another shard's forward
            pixels = encoder.prepare_images(pixels)
        with exclusive(encoder) as passes:
            vectors = encoder.encode_images(pixels)
            spent = passes()
        table = pa.table(
            {
                "image_id": rows.column("image_id"),
                "embedding": embedding_column(vectors, present, encoder.dim),
                "error": pa.array(errors, pa.string()),
            },
            schema=IMAGE_EMBEDDINGS.schema(encoder.dim),
        )
        return table, spent

    return cached_image_rows(path, lambda: image_ids(manifest), compute)


@stage("embed")
@task(cache_policy=NO_CACHE, name="embed-texts", tags=[MODEL_TAG])
def embed_texts_shard(
    root: str, shard: Shard, encoder_id: str, answerer: Answerer, kind: AnswerKind, asked: ShardResult
) -> ShardResult:
    """Embed one kind of answer ('description' or 'prediction') of one shard: the answers `asked`
    that no other selection of the split embedded with this encoder."""
    path = text_embeddings_shard(
        root, shard.selection, shard.class_names, encoder_id, answerer, kind, shard.index
    )

    def compute(todo: list[int]):
        answers = read_table(asked.path, columns=["image_id", "text"]).take(todo)
        texts = answers.column("text").to_pylist()
        present = [t is not None for t in texts]
        encoder = load_encoder(encoder_id)
        with exclusive(encoder) as passes:
            embedded = encoder.encode_texts([t for t in texts if t is not None])
            spent = passes()
        truncated = iter(embedded.truncated)
        table = pa.table(
            {
                "image_id": answers.column("image_id"),
                "embedding": embedding_column(embedded.vectors, present, encoder.dim),
                "truncated": pa.array([next(truncated) if p else None for p in present], pa.bool_()),
            },
            schema=TEXT_EMBEDDINGS.schema(encoder.dim),
        )
        return table, spent

    return cached_image_rows(path, lambda: image_ids(asked), compute)
