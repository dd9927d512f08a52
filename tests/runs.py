"""What several test modules share about a run: comparing the metrics of two runs."""

from __future__ import annotations

import pytest

RUN_ONLY = ("published_top1",)  # added to the printed rows, not a column of the `metrics` view


def metric_key(row: dict) -> tuple:
    return (row["encoder"], row["describer"], row["class_weights"], row["components"])


def assert_same_metrics(a: list[dict], b: list[dict], rows: int) -> None:
    """The same metrics rows, floats to rounding (DuckDB may sum in another order)."""
    a, b = (
        [{k: v for k, v in r.items() if k not in RUN_ONLY} for r in sorted(x, key=metric_key)] for x in (a, b)
    )
    assert len(a) == len(b) == rows
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y)


def tiny_run(limit: int = 8, shard_size: int = 4, seed: int | None = 0, **overrides: object) -> dict:
    """Flow parameters of a small CIFAR-10 dev run: a few shards, one class description per prompt."""
    params = {
        "datasets": ["cifar10"],
        "splits": ["dev"],
        "limit": limit,
        "sample_seed": seed,
        "shard_size": shard_size,
        "class_samples": 1,
    }
    return {**params, **overrides}


def cli_args(params: dict) -> list[str]:
    """The same run as `python -m flows.benchmark` flags."""
    args: list[str] = []
    for name, value in params.items():
        if value is None:
            continue
        args.append("--" + name.replace("_", "-"))
        args += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return args
