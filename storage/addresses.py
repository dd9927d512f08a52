"""One function per table that makes a shard's address from what the shard depends on. Tasks and
the report ask here; nothing else assembles partition keys, so a task's upstream edge and the path
it reads cannot disagree."""

from __future__ import annotations

from collections.abc import Sequence

from method.fusion import weighting_answerer
from method.prompts import AnswerKind
from storage.keys import NO_ANSWERS, Answerer, Selection, classes_key, run_keys
from storage.paths import shard_path
from storage.schemas import (
    CLASS_DESCRIPTIONS,
    CLASS_WEIGHTS,
    DESCRIPTIONS,
    IMAGE_EMBEDDINGS,
    MANIFEST,
    PREDICTIONS,
    TEXT_EMBEDDINGS,
)


def manifest_shard(root: str, selection: Selection, index: int) -> str:
    return shard_path(root, MANIFEST, selection.keys(), index)


def answers_shard(
    root: str,
    selection: Selection,
    class_names: Sequence[str],
    answerer: Answerer,
    kind: AnswerKind,
    index: int,
    encoder: str | None = None,
) -> str:
    """A describer's answers of one kind; `encoder` ranks a shortlisted prediction's classes."""
    keys = {**selection.keys(), **answerer.answer_keys(kind, class_names, encoder)}
    return shard_path(root, DESCRIPTIONS, keys, index)


def image_embeddings_shard(root: str, selection: Selection, encoder: str, index: int) -> str:
    return shard_path(root, IMAGE_EMBEDDINGS, {**selection.keys(), "encoder": encoder}, index)


def text_embeddings_shard(
    root: str,
    selection: Selection,
    class_names: Sequence[str],
    encoder: str,
    answerer: Answerer,
    kind: AnswerKind,
    index: int,
) -> str:
    keys = {**selection.keys(), "encoder": encoder, **answerer.answer_keys(kind, class_names, encoder)}
    return shard_path(root, TEXT_EMBEDDINGS, keys, index)


def class_descriptions_shard(root: str, dataset: str, class_names: Sequence[str], answerer: Answerer) -> str:
    keys = {"dataset": dataset, "classes": classes_key(class_names), **answerer.class_keys()}
    return shard_path(root, CLASS_DESCRIPTIONS, keys, 0)


def class_weights_shard(
    root: str,
    dataset: str,
    class_names: Sequence[str],
    encoder: str,
    weighting: str,
    answerer: Answerer | None,
) -> str:
    """`answerer` only counts for weightings made from class descriptions (see method.fusion)."""
    made_from = weighting_answerer(weighting, answerer)
    answers = made_from.class_keys() if made_from else NO_ANSWERS
    classes = classes_key(class_names)
    keys = {"dataset": dataset, "classes": classes, "encoder": encoder, "class_weights": weighting, **answers}
    return shard_path(root, CLASS_WEIGHTS, keys, 0)


def predictions_shard(
    root: str,
    selection: Selection,
    class_names: Sequence[str],
    encoder: str,
    answerer: Answerer | None,
    weighting: str,
    index: int,
) -> str:
    """Without an answerer: the image-only baseline's predictions."""
    keys = run_keys(selection, class_names, encoder, answerer, weighting)
    return shard_path(root, PREDICTIONS, keys, index)
