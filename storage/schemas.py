"""Every Parquet table of wdys, declared once: its partition keys (in path order) and its columns.

Embeddings are fixed-size lists of float32 so that DuckDB and pyarrow see their dimension.
Bumping a table's `version` moves it to a new partition (`v=<n>`), so old shards are never misread.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Table:
    name: str
    partition_keys: tuple[str, ...]
    version: int
    columns: tuple[pa.Field, ...]

    def schema(self, dim: int | None = None) -> pa.Schema:
        """The Arrow schema; embedding columns get the fixed size `dim`."""
        fields = []
        for f in self.columns:
            if f.metadata and f.metadata.get(b"wdys") == b"embedding":
                if dim is None:
                    raise ValueError(f"table {self.name} needs the embedding dimension")
                fields.append(pa.field(f.name, pa.list_(pa.float32(), dim), nullable=f.nullable))
            else:
                fields.append(f)
        return pa.schema(fields)


def _embedding(name: str, nullable: bool = True) -> pa.Field:
    """A placeholder field that Table.schema turns into a fixed-size list of the encoder's dimension."""
    return pa.field(name, pa.list_(pa.float32()), nullable=nullable, metadata={"wdys": "embedding"})


_DATA_KEYS = ("dataset", "split", "subset")
_ANSWER_KEYS = ("describer", "prompts", "gen")

MANIFEST = Table(
    "manifest",
    _DATA_KEYS,
    1,
    (
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("image", pa.binary()),  # encoded bytes, or null when `uri` points at the image
        pa.field("uri", pa.string()),
    ),
)

# `kind` is 'description' or 'prediction': separate shards, since a prediction can depend on more
# (a shortlist of classes ranked by an encoder) than a description does.
_IMAGE_ANSWER_KEYS = ("describer", "kind", "prompts", "gen", "shortlist")

# Answers are at version 3 and up since `truncated` is recorded and no transient failure is stored.
DESCRIPTIONS = Table(
    "descriptions",
    _DATA_KEYS + _IMAGE_ANSWER_KEYS,
    3,
    (
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("latency_s", pa.float64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("classes", pa.list_(pa.int64())),  # the class indices a shortlisted prompt listed
        pa.field("truncated", pa.bool_()),  # the answer stopped at the token limit
    ),
)

# Encoder outputs are at version 2 and up since open_clip models follow their weights' activation
# (QuickGELU for OpenAI's): embeddings of the earlier GELU builds must not be reused.
IMAGE_EMBEDDINGS = Table(
    "image_embeddings",
    _DATA_KEYS + ("encoder",),
    2,
    (
        pa.field("image_id", pa.string(), nullable=False),
        _embedding("embedding"),  # null when the image could not be read
        pa.field("error", pa.string()),
    ),
)

TEXT_EMBEDDINGS = Table(
    "text_embeddings",
    _DATA_KEYS + ("encoder",) + _IMAGE_ANSWER_KEYS,
    3,
    (
        pa.field("image_id", pa.string(), nullable=False),
        _embedding("embedding"),  # null when the describer gave no answer
        pa.field("truncated", pa.bool_()),
    ),
)

# Class-dependent tables carry `classes`, a hash of the class names in label order (version 3 and
# up, predictions 4): editing a user's class names recomputes exactly what the names go into.
CLASS_DESCRIPTIONS = Table(
    "class_descriptions",
    ("dataset", "classes") + _ANSWER_KEYS,
    3,
    (
        pa.field("class_index", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("prompt_index", pa.int64(), nullable=False),
        pa.field("sample", pa.int64(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("latency_s", pa.float64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("truncated", pa.bool_()),
    ),
)

CLASS_WEIGHTS = Table(
    "class_weights",
    ("dataset", "classes", "encoder", "class_weights") + _ANSWER_KEYS,
    3,
    (
        pa.field("class_index", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        _embedding("weight", nullable=False),
        pa.field("texts", pa.int64(), nullable=False),  # how many texts were averaged
        pa.field("truncated", pa.int64(), nullable=False),  # how many of them the tokenizer cut
    ),
)

PREDICTIONS = Table(
    "predictions",
    _DATA_KEYS + ("classes", "encoder", "describer", "prompts", "gen", "shortlist", "class_weights"),
    4,
    (
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("components", pa.string(), nullable=False),  # e.g. 'image+description+prediction'
        pa.field("top5", pa.list_(pa.int64())),  # null when the image has none of the components
        pa.field("scores", pa.list_(pa.float32())),
    ),
)

# What each partition value stands for (a model id, a dataset's location, the prompt texts or the
# generation settings behind a hash): written by every run, read through the `keys` view.
KEY_VALUES = Table(
    "key_values",
    (),
    1,
    (
        pa.field("key", pa.string(), nullable=False),  # the partition key: encoder, prompts, gen, ...
        pa.field("value", pa.string(), nullable=False),  # its value in the paths and the tables
        pa.field("raw", pa.string(), nullable=False),  # the value as given (model id, dataset spec)
        pa.field("meaning", pa.string()),  # JSON: what a hash was made from, a model's backend, ...
    ),
)

TABLES = {
    t.name: t
    for t in (
        MANIFEST,
        DESCRIPTIONS,
        IMAGE_EMBEDDINGS,
        TEXT_EMBEDDINGS,
        CLASS_DESCRIPTIONS,
        CLASS_WEIGHTS,
        PREDICTIONS,
        KEY_VALUES,
    )
}

# Key vocabularies, derived from the declarations above.
DATA_KEYS = MANIFEST.partition_keys
ANSWER_KEYS = DESCRIPTIONS.partition_keys  # one describer's answers of one kind
RUN_KEYS = PREDICTIONS.partition_keys  # one run: data, encoder, answer source and class weighting
