"""The `leaderboard` view: every model pair's headline numbers per dataset, across all runs of a root.

One row per model row (encoder x describer, with the describer's prompts, generation settings and
shortlist), class weighting and dataset split: the image-only top-1, the best fused subset (two or
more components summed) with its top-1 and its gain in points over image-only, open_clip's
published top-1 of the encoder's weights on the dataset where `storage/reference/` lists one, and
whether the cell covers the full split. A model row with several row selections of the same split
shows one: the full split first, else the one with the most images. Every number is a `metrics`
row's, so a rerun on a new model adds its row as soon as its run's catalog refresh ends.
"""

from __future__ import annotations

import duckdb

from storage.analysis import COMPONENT_ORDER
from storage.reference import encoder_weights_sql, published_cte
from storage.schemas import RUN_KEYS

MODEL_ROW = ("encoder", "describer", "prompts", "gen", "shortlist")  # a leaderboard row
CELL = (*MODEL_ROW, "class_weights", "dataset", "split")  # one cell of a leaderboard table
_K = ", ".join(RUN_KEYS)


def leaderboard_sql() -> str:
    return f"""
create or replace view leaderboard as
with {published_cte()},
fused as (
    select {_K}, components as best_components, top1 as best_top1, gain_top1
    from metrics where components like '%+%' and top1 is not null
    qualify row_number() over (
        partition by {_K} order by top1 desc, list_position({COMPONENT_ORDER}, components)) = 1
), cells as (
    select i.{", i.".join(RUN_KEYS)}, i.n + i.excluded as images, i.full_split, i.top1 as image_top1,
           f.best_components, f.best_top1, f.gain_top1
    from metrics i left join fused f using ({_K})
    where i.components = 'image'
    qualify row_number() over (
        partition by {", ".join(f"i.{k}" for k in CELL)}
        order by i.full_split desc, i.n + i.excluded desc, i.subset, i.classes) = 1
)
select {", ".join(f"c.{k}" for k in CELL)}, c.subset, c.classes, c.images, c.full_split,
       c.image_top1, c.best_components, c.best_top1, c.gain_top1,
       p.published_top1::double as published_top1
from cells c
left join published p on p.weights = {encoder_weights_sql("c.encoder")} and p.dataset = c.dataset
order by {", ".join(f"c.{k}" for k in CELL)}
"""


def create_leaderboard_view(con: duckdb.DuckDBPyConnection, made: list[str]) -> list[str]:
    """The view, where the catalog has `metrics` (`made`: the views already created)."""
    if "metrics" not in made:
        return []
    con.execute(leaderboard_sql())
    return ["leaderboard"]
