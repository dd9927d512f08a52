"""Record what every partition value of a run stands for, so that the `keys` view can map slugs and
hashes in the tables back to model ids, dataset locations, prompt texts and generation settings.

Generic on purpose: whatever keys `Selection` and `Answerer` return are recorded, and a hash made
by `method.prompts.content_hash` is recorded with the JSON it was made from, so a new cache key
needs nothing here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE

from method.prompts import hashed_value
from storage.io import write_table
from storage.keys import Answerer, Selection, classes_key
from storage.paths import NONE, partition_dir, partition_value, split_dataset_spec
from storage.schemas import KEY_VALUES


def meaning(key: str, raw: str, selection: Selection | None = None) -> str | None:
    """JSON saying what `raw` stands for, or None where the value says it all."""
    found: object = None
    if hashed_value(raw) is not None:
        return hashed_value(raw)
    if key in ("encoder", "describer") and raw != NONE:
        backend, _, model = raw.partition(":")
        spec, _, revision = model.partition("@")
        found = {"backend": backend, "model": spec, "revision": revision or None}
    elif key == "dataset":
        layout, location, name = split_dataset_spec(raw)
        found = {"layout": layout or "benchmark", "location": location, "name": name}
    elif key == "subset" and selection is not None:
        found = {"limit": selection.limit, "seed": selection.seed, "shard_size": selection.shard_size}
    return None if found is None else json.dumps(found, sort_keys=True)


def key_rows(
    selections: Sequence[Selection],
    class_names: Sequence[Sequence[str]],
    encoders: Sequence[str],
    answerers: Sequence[Answerer],
    weightings: Sequence[str],
) -> list[dict[str, str | None]]:
    """One row per distinct (key, value) a run with these parameters files results under;
    `class_names[i]` are the classes of `selections[i]`."""
    groups: list[tuple[Mapping[str, object], Selection | None]] = [(s.keys(), s) for s in selections]
    groups += [({"classes": classes_key(names)}, None) for names in class_names]
    groups += [({"encoder": e}, None) for e in encoders]
    groups += [({"class_weights": w}, None) for w in weightings]
    for src in answerers:
        groups += [(src.class_keys(), None), (src.run_keys(), None)]
        for names in class_names:
            groups += [(src.answer_keys("description", names), None)]
            groups += [(src.answer_keys("prediction", names, e), None) for e in encoders]
    rows: dict[tuple[str, str], dict[str, str | None]] = {}
    for keys, selection in groups:
        for key, value in keys.items():
            raw = str(value)
            rows.setdefault(
                (key, partition_value(raw)),
                {
                    "key": key,
                    "value": partition_value(raw),
                    "raw": raw,
                    "meaning": meaning(key, raw, selection),
                },
            )
    return sorted(rows.values(), key=lambda r: (r["key"], r["value"]))


def write_key_rows(root: str, rows: Iterable[dict[str, str | None]]) -> str:
    """One file per distinct content (named by its hash), so reruns add nothing and never clash."""
    rows = list(rows)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    table = pa.Table.from_pylist(rows, schema=KEY_VALUES.schema())
    path = f"{partition_dir(root, KEY_VALUES, {})}/keys-{digest}.parquet"
    write_table(path, table, exclusive=True)
    return path


@task(cache_policy=NO_CACHE, name="record-keys")
def record_keys(
    root: str,
    selections: Sequence[Selection],
    class_names: Sequence[Sequence[str]],
    encoders: Sequence[str],
    answerers: Sequence[Answerer],
    weightings: Sequence[str],
) -> str:
    return write_key_rows(root, key_rows(selections, class_names, encoders, answerers, weightings))
