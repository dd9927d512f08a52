"""Published zero-shot figures that a plain image-only run must land near (storage/reference/)."""

from __future__ import annotations

import csv
import itertools
from functools import cache
from pathlib import Path

from storage.paths import partition_value

OPENCLIP_TABLE = Path(__file__).with_name("reference") / "openclip_zeroshot_top1.csv"
TOLERANCE_POINTS = 2.0  # a larger gap on the evaluation split points to a wrong build or class list
# The precision suffixes of an open_clip encoder id (`backends.open_clip_encoder.PRECISIONS`) and how
# the check names them. open_clip's table was made under autocast too, so any precision is compared.
PRECISION_NAMES = {"fp32": "float32", "amp-bf16": "bf16 autocast", "amp-fp16": "fp16 autocast"}
_PRECISION_SUFFIX = r"\+(" + "|".join(PRECISION_NAMES) + ")$"


def split_encoder_precision(encoder: str) -> tuple[str, str]:
    """An encoder's partition value without its precision suffix, and the precision's name:
    `open_clip_ViT-L-14_openai+amp-bf16` -> (`open_clip_ViT-L-14_openai`, `bf16 autocast`)."""
    base, sep, suffix = encoder.rpartition("+")
    if sep and suffix in PRECISION_NAMES:
        return base, PRECISION_NAMES[suffix]
    return encoder, PRECISION_NAMES["fp32"]


@cache
def published_top1() -> dict[tuple[str, str], float]:
    """(encoder partition value, dataset) -> open_clip's published top-1 in percent, keyed the way
    results are stored: `open_clip:<model>/<tag>`, its `-quickgelu` name (the same weights) and
    either forced activation (so that forcing the wrong one shows as a gap)."""
    figures: dict[tuple[str, str], float] = {}
    with OPENCLIP_TABLE.open(newline="") as f:
        for row in csv.DictReader(f):
            model, tag = row.pop("model"), row.pop("pretrained")
            names = {model, model.removesuffix("-quickgelu"), model.removesuffix("-quickgelu") + "-quickgelu"}
            for dataset, value in row.items():
                if not value:
                    continue
                for name, suffix in itertools.product(names, ("", "#gelu", "#quickgelu")):
                    encoder = partition_value(f"open_clip:{name}/{tag}{suffix}")
                    figures.setdefault((encoder, dataset), round(100 * float(value), 2))
    return figures


def published_sql() -> str:
    """The `published_baselines` view: every image-only `templates` row of `metrics` whose encoder
    (architecture and weights, whatever its precision suffix) and dataset open_clip's table lists,
    with the published figure and the difference."""
    return f"""
create or replace view published_baselines as
with {published_cte()}
select m.dataset, m.split, m.subset, m.encoder, m.class_weights, m.components, m.n, m.top1,
       p.published_top1::double as published_top1, m.top1 - p.published_top1::double as difference
from metrics m join published p
  on p.weights = {encoder_weights_sql("m.encoder")} and p.dataset = m.dataset
where m.components = 'image' and m.class_weights = 'templates'
"""


def published_cte() -> str:
    """`published(weights, dataset, published_top1)`: open_clip's table as a SQL common table
    expression; `weights` is the encoder's partition value without its precision suffix."""
    values = ", ".join(f"('{e}', '{d}', {v})" for (e, d), v in sorted(published_top1().items()))
    return f"published(weights, dataset, published_top1) as (values {values})"


def encoder_weights_sql(column: str) -> str:
    """SQL for the weights an encoder column names: its partition value without a precision suffix."""
    return f"regexp_replace({column}, '{_PRECISION_SUFFIX}', '')"
