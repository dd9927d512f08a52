"""Published zero-shot figures that a plain image-only run must land near (storage/reference/)."""

from __future__ import annotations

import csv
import itertools
from functools import cache
from pathlib import Path

from storage.paths import partition_value

OPENCLIP_TABLE = Path(__file__).with_name("reference") / "openclip_zeroshot_top1.csv"
TOLERANCE_POINTS = 2.0  # a larger gap on the evaluation split points to a wrong build or class list


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
    and dataset open_clip's table lists, with the published figure and the difference."""
    values = ", ".join(f"('{e}', '{d}', {v})" for (e, d), v in sorted(published_top1().items()))
    return f"""
create or replace view published_baselines as
with published(encoder, dataset, published_top1) as (values {values})
select m.dataset, m.split, m.subset, m.encoder, m.class_weights, m.components, m.n, m.top1,
       p.published_top1::double as published_top1, m.top1 - p.published_top1::double as difference
from metrics m join published p using (encoder, dataset)
where m.components = 'image' and m.class_weights = 'templates'
"""
