"""Evaluation beyond accuracy, as DuckDB views over the shards (created by `catalog.create_views`).

- `class_names`: dataset x class, the class list (from `class_weights`);
- `benchmarks`: dataset x split x subset, its images and classes; then the registered benchmarks
  not ingested yet (given by the caller: `sources.registry.list_benchmarks`), with their class
  count and no images;
- `per_class`: run x components x class: images, excluded, top-1 / top-5 accuracy of the class;
- `confusion`: run x components x (label, predicted): image count; `predicted` is the top-1
  class, null for images without a query;
- `describer_cost`: the describer's answers of a dataset split per kind (describer, kind, prompts,
  gen, shortlist): images, errors, answers cut at the token limit, latency and token counts per
  image and in total;
- `gains`: run x non-image components: the paired comparison with image-only on the same run.

A run is one value of `schemas.RUN_KEYS`. `gains` pairs each image's top-1 hit under a variant with
its hit under `image` alone on the same run, over the images that have a query under both (so its
`n` and accuracies can differ from `metrics` when a variant excludes images whose answers failed):
`b` = baseline right and variant wrong, `c` = the reverse, `gain_top1` = 100 (c - b) / n points,
`mcnemar_p` the exact two-sided McNemar p-value, computed in SQL from the binomial tail with lgamma.
Its 95% paired-bootstrap interval depends on (n, b, c) only and is drawn in NumPy by
`with_intervals` (method/stats.py): seeded per compared pair, O(resamples) whatever n is.

Token counts are null where the describer has no tokenizer (the offline profile): sums of nulls
stay null, `tokens_counted` says how many answers had a count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from method import stats
from method.fusion import component_order
from storage.paths import partition_value
from storage.schemas import ANSWER_KEYS, RUN_KEYS

BASELINE = "image"
_K = ", ".join(RUN_KEYS)
COMPONENT_ORDER = str(component_order())  # a DuckDB list literal: ['image', 'description', ...]
Registered = tuple[str, str, int]  # a registered benchmark: name, evaluation split, classes

CLASS_NAMES_SQL = """
create or replace view class_names as
select dataset, class_index, any_value(class_name) as class_name
from class_weights group by all
"""

# Without class_weights shards the class list is unknown: names stay null, counts come from labels.
_NO_CLASS_NAMES = (
    "(select null::varchar as dataset, null::bigint as class_index, null::varchar as class_name)"
)


def benchmarks_sql(names: str, registered: Sequence[Registered]) -> str:
    """Every ingested dataset split and row selection with its images and classes, then every
    registered benchmark not ingested yet (its evaluation split and class count, no images)."""
    rows = [f"({sql_text(name)}, {sql_text(split)}, {int(classes)})" for name, split, classes in registered]
    registry = ", ".join(rows) or "(null::varchar, null::varchar, null::bigint)"
    return f"""
create or replace view benchmarks as
with registry(dataset, split, classes) as (values {registry}),
images as (
    select dataset, split, subset, count(*) as images, count(distinct label) as labels_present
    from manifest group by all
), classes as (
    select dataset, count(*) as classes from {names} group by all
)
select i.dataset, i.split, i.subset, i.images,
       coalesce(c.classes, r.classes, i.labels_present)::bigint as classes, i.labels_present,
       r.dataset is not null as registered
from images i
left join classes c on c.dataset = i.dataset
left join registry r on r.dataset = i.dataset
union all
select dataset, split, null, null, classes, null, true
from registry where dataset is not null and dataset not in (select dataset from images)
order by images is null, dataset, split, subset
"""


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def per_class_sql(names: str) -> str:
    return f"""
create or replace view per_class as
with counts as (
    select {_K}, components, label,
           count(*) filter (where top5 is not null) as n,
           count(*) filter (where top5 is null) as excluded,
           count(*) filter (where top5[1] = label) as correct1,
           count(*) filter (where list_contains(top5, label)) as correct5
    from predictions group by all
)
select c.{", c.".join(RUN_KEYS)}, c.components, c.label, k.class_name, c.n, c.excluded,
       c.correct1, c.correct5,
       100.0 * c.correct1 / nullif(c.n, 0) as top1,
       100.0 * c.correct5 / nullif(c.n, 0) as top5
from counts c left join {names} k on k.dataset = c.dataset and k.class_index = c.label
"""


def confusion_sql(names: str) -> str:
    return f"""
create or replace view confusion as
with counts as (
    select {_K}, components, label, top5[1] as predicted, count(*) as images
    from predictions group by all
)
select c.*, l.class_name as label_name, p.class_name as predicted_name
from counts c
left join {names} l on l.dataset = c.dataset and l.class_index = c.label
left join {names} p on p.dataset = c.dataset and p.class_index = c.predicted
"""


DESCRIBER_COST_SQL = f"""
create or replace view describer_cost as
select {", ".join(ANSWER_KEYS)},
       count(*) as images,
       count(*) filter (where error is not null or text is null) as errors,
       count(*) filter (where truncated) as truncated,
       avg(latency_s) as mean_latency_s,
       sum(latency_s) as total_latency_s,
       count(prompt_tokens) as tokens_counted,
       avg(prompt_tokens) as mean_prompt_tokens,
       sum(prompt_tokens) as prompt_tokens,
       avg(completion_tokens) as mean_completion_tokens,
       sum(completion_tokens) as completion_tokens
from descriptions group by all
order by {", ".join(ANSWER_KEYS)}
"""

# Hits are paired by a 64-bit hash of the run keys and the image id (joining on the nine text keys
# is several times slower at 10M rows); the hash is mapped back to the keys at the end, where a
# collision between two runs (odds about runs^2 / 2^65) would show as duplicated rows. The binomial
# tail P[X <= min(b, c)], X ~ Bin(b + c, 1/2), is summed term by term in log space.
GAINS_SQL = f"""
create or replace view gains as
with hits as (
    select hash({_K}) as run, components, image_id, coalesce(top5[1] = label, false) as hit
    from predictions where top5 is not null
), paired as (
    select v.run, v.components,
           count(*) as n,
           count(*) filter (where base.hit) as base_correct,
           count(*) filter (where v.hit) as correct,
           count(*) filter (where base.hit and not v.hit) as b,
           count(*) filter (where v.hit and not base.hit) as c
    from hits v join hits base on base.run = v.run and base.image_id = v.image_id
    where base.components = '{BASELINE}' and v.components <> '{BASELINE}'
    group by all
), tails as (
    select run, components,
           sum(exp(lgamma(b + c + 1) - lgamma(k + 1) - lgamma(b + c - k + 1) - (b + c) * ln(2))) as tail
    from (select *, unnest(range(least(b, c) + 1)) as k from paired)
    group by all
), runs as (
    select distinct {_K}, hash({_K}) as run from predictions
)
select r.{", r.".join(RUN_KEYS)}, p.components, p.n,
       100.0 * p.base_correct / p.n as base_top1,
       100.0 * p.correct / p.n as top1,
       100.0 * (p.c - p.b) / p.n as gain_top1,
       p.b, p.c,
       least(1.0, 2 * t.tail) as mcnemar_p
from paired p join tails t using (run, components) join runs r using (run)
order by {", ".join("r." + k for k in RUN_KEYS)}, list_position({COMPONENT_ORDER}, p.components)
"""


def create_analysis_views(
    con: duckdb.DuckDBPyConnection, made: Sequence[str], registered: Sequence[Registered] = ()
) -> list[str]:
    """The views above whose tables exist (`made`: the table views already created)."""
    views = []
    names = "class_names" if "class_weights" in made else _NO_CLASS_NAMES
    if "class_weights" in made:
        con.execute(CLASS_NAMES_SQL)
        views.append("class_names")
    if "manifest" in made:
        con.execute(benchmarks_sql(names, registered))
        views.append("benchmarks")
    if "descriptions" in made:
        con.execute(DESCRIBER_COST_SQL)
        views.append("describer_cost")
    if "predictions" in made:
        for sql in (per_class_sql(names), confusion_sql(names), GAINS_SQL):
            con.execute(sql)
        views += ["per_class", "confusion", "gains"]
    return views


def run_rows(
    con: duckdb.DuckDBPyConnection, view: str, runs: Iterable[dict[str, str]], keys: Sequence[str] = RUN_KEYS
) -> list[dict]:
    """The rows of `view` that belong to the given runs (dicts of raw, unslugged key values)."""
    wanted = pa.Table.from_pylist([{k: partition_value(run[k]) for k in keys} for run in runs])
    if not wanted.num_rows:
        return []
    name = f"wanted_{view}"
    con.register(name, wanted)
    try:
        return (
            con.sql(f"select v.* from {view} v semi join {name} w using ({', '.join(keys)})")
            .to_arrow_table()
            .to_pylist()
        )
    finally:
        con.unregister(name)


def with_intervals(
    rows: list[dict], resamples: int = stats.RESAMPLES, seed: int = 0, level: float = stats.LEVEL
) -> list[dict]:
    """`gains` rows with `ci_low`, `ci_high` (the paired-bootstrap interval of `gain_top1`, points)
    and `draws` (the resampled gains, for intervals of averages over datasets)."""
    out = []
    for r in rows:
        draws = stats.bootstrap_gains(
            r["n"], r["b"], r["c"], resamples, stats.run_seed(seed, [r[k] for k in (*RUN_KEYS, "components")])
        )
        low, high = stats.percentile_interval(draws, level)
        out.append({**r, "ci_low": low, "ci_high": high, "draws": draws})
    return out


def average_interval(rows: Sequence[dict], level: float = stats.LEVEL) -> tuple[float, float]:
    """Interval of the mean gain of `with_intervals` rows (one per dataset), stratified by dataset."""
    if not rows:
        return float("nan"), float("nan")
    return stats.average_gain_ci([np.asarray(r["draws"]) for r in rows], level)
