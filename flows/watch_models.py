"""The `watch-models` flow: keep every registered model evaluated.

It reads the versioned model registry (deployments/models.toml), asks DuckDB which (dataset, split,
encoder, describer) combinations have no results yet, and starts one `benchmark` deployment run for
them, with an idempotency key so that a second watch run starts nothing while (or after) that one
runs. Combinations already evaluated that fall inside the run's cross product are read from cache.
An open VLM registered as `hf:` is passed on as registered: the benchmark run decides on its own
worker whether it runs as `vllm:` (`vllm_where_available`, set by the paper deployments), and either
engine's results count as that model evaluated.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.deployments import run_deployment
from prefect.events import emit_event

from method.prompts import content_hash
from sources.registry import list_benchmarks
from storage.catalog import connect, refresh_catalog
from storage.paths import partition_value, resolve_root

REPO = Path(__file__).resolve().parents[1]
MODEL_REGISTERED = "wdys.model.registered"


@dataclass(frozen=True)
class Registry:
    deployment: str
    datasets: list[str]
    splits: list[str]
    encoders: list[str]
    describers: list[str]
    parameters: dict


def hub_models(pattern: dict) -> list[str]:
    """Models matching a hub pattern; none when the hub cannot be reached."""
    try:
        from huggingface_hub import HfApi

        found = HfApi().list_models(
            author=pattern.get("author"), search=pattern.get("search"), limit=pattern.get("limit", 5)
        )
        prefix = "hf:" if pattern.get("role", "describer") == "describer" else "open_clip:hf-hub:"
        return [prefix + m.id for m in found]
    except Exception as exc:  # noqa: BLE001 - offline or hub error: the static registry still holds
        get_run_logger().warning("hub pattern %s not resolved: %s", pattern, exc)
        return []


def read_registry(path: str | Path, extra_models: list[str]) -> Registry:
    data = tomllib.loads(Path(path).read_text())
    encoders = [e["id"] for e in data.get("encoders", [])]
    describers = [d["id"] for d in data.get("describers", [])]
    for pattern in data.get("hub_patterns", []):
        (encoders if pattern.get("role") == "encoder" else describers).extend(hub_models(pattern))
    for model in extra_models:  # announced by an event before the registry file caught up
        (encoders if model.startswith(("open_clip:", "offline:conse")) else describers).append(model)
    return Registry(
        deployment=data["deployment"],
        datasets=data["datasets"],
        splits=data["splits"],
        encoders=list(dict.fromkeys(encoders)),
        describers=list(dict.fromkeys(describers)),
        parameters=data.get("parameters", {}),
    )


@task(cache_policy=NO_CACHE, name="evaluated-combinations")
def evaluated_combinations(root: str) -> set[tuple[str, str, str, str]]:
    """(dataset, split, encoder, describer) with predictions, as path-safe partition values."""
    database = refresh_catalog(root, list_benchmarks())
    with connect(root, database, read_only=True) as con:
        views = {r[0] for r in con.sql("select view_name from duckdb_views() where not internal").fetchall()}
        if "predictions" not in views:
            return set()
        return set(con.sql("select distinct dataset, split, encoder, describer from predictions").fetchall())


def engines_of(describer: str) -> list[str]:
    """The ids a describer's results may be stored under: an `hf:` VLM's also as `vllm:`, the same
    model on the engine a worker with vLLM runs it on."""
    scheme, _, spec = describer.partition(":")
    return [describer, f"vllm:{spec}"] if scheme == "hf" else [describer]


def missing_combinations(registry: Registry, evaluated: set) -> list[tuple[str, str, str, str]]:
    combos = itertools.product(registry.datasets, registry.splits, registry.encoders, registry.describers)
    return [
        c
        for c in combos
        if not any(tuple(map(partition_value, (*c[:3], d))) in evaluated for d in engines_of(c[3]))
    ]


@flow(name="watch-models")
def watch_models(
    registry_path: str = "deployments/models.toml",
    root: str | None = None,
    extra_models: list[str] | None = None,
) -> dict:
    """Start one benchmark run for the registered models' combinations that have no results yet.

    Args:
        registry_path: the model registry (TOML), relative to the repository root or absolute.
        root: storage root to check and to pass on (default $WDYS_ROOT, else ./data).
        extra_models: model ids announced by a `wdys.model.registered` event.
    """
    logger = get_run_logger()
    root = resolve_root(root)
    registry = read_registry(REPO / registry_path, extra_models or [])
    missing = missing_combinations(registry, evaluated_combinations(root))
    if not missing:
        logger.info("every registered combination has results")
        return {"missing": [], "flow_run_id": None}
    pick = lambda i: list(dict.fromkeys(c[i] for c in missing))  # noqa: E731 - keeps registry order
    parameters = {
        **registry.parameters,
        "datasets": pick(0),
        "splits": pick(1),
        "encoders": pick(2),
        "describers": pick(3),
        "root": root,
    }
    key = "watch-models-" + content_hash([registry.deployment, parameters], length=16)
    run = run_deployment(
        registry.deployment, parameters=parameters, idempotency_key=key, timeout=0, as_subflow=False
    )
    logger.info("%d missing combinations -> flow run %s (%s)", len(missing), run.id, key)
    return {"missing": [list(c) for c in missing], "flow_run_id": str(run.id), "idempotency_key": key}


def announce_model(model_id: str) -> None:
    """Emit the event whose trigger runs watch-models at once for this model."""
    emit_event(
        event=MODEL_REGISTERED,
        resource={
            "prefect.resource.id": f"wdys.model.{partition_value(model_id)}",
            "wdys.model-id": model_id,
        },
    )
