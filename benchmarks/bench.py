"""Performance figures of wdys, each measured side by side in one run and printed as a ratio with
its target (these machines are noisy: only ratios from one run are compared).

    python -m benchmarks.bench [--only pipeline queries offline] [--images N]

Sections (issue "Performance"; results and the machine they ran on go in docs/BENCHMARKS.md):
- pipeline: the offline-profile benchmark flow, cold, against the time spent inside model forward
  passes during the same run (target: overhead <= 10%), then fully cached (target: <= 5% of cold);
- queries: the metrics view over 1M, 3M and 10M synthetic prediction rows (target: < 10 s at 10M,
  linear in rows);
- offline: the offline encoder's images/s through `encode_images` against its raw forward passes,
  at several batch sizes, with and without channels_last.
Not implemented here yet: the CLIP_benchmark comparison, the transformers describer against a bare
`generate` loop, and peak memory at 1x and 10x the images (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def verdict(name: str, value: float, target: str, met: bool, raw: str) -> dict:
    line = f"{name:<48} {value:>10.3f}   target {target:<14} {'MET' if met else 'MISSED'}   ({raw})"
    print(line, flush=True)
    return {"figure": name, "value": value, "target": target, "met": met, "raw": raw}


@contextlib.contextmanager
def forward_timer(modules: list[torch.nn.Module]) -> Iterator[list[float]]:
    """Seconds spent inside the forward of each given module (top-level calls only)."""
    spent = [0.0]
    depth = [0]
    start: list[float] = []

    def pre(*_):
        if depth[0] == 0:
            start.append(time.perf_counter())
        depth[0] += 1

    def post(*_):
        depth[0] -= 1
        if depth[0] == 0:
            spent[0] += time.perf_counter() - start.pop()

    handles = [h for m in modules for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        yield spent
    finally:
        for h in handles:
            h.remove()


def pipeline(images: int) -> list[dict]:
    from backends.registry import load_describer, load_encoder
    from flows.benchmark import DEFAULT_DESCRIBERS, DEFAULT_ENCODERS, benchmark

    encoder, describer = load_encoder(DEFAULT_ENCODERS[0]), load_describer(DEFAULT_DESCRIBERS[0])
    modules = [encoder.classifier.model, encoder.text.model, describer.classifier.model, describer.text.model]
    params = dict(splits=["test"], limit=images, sample_seed=0, class_samples=1)
    with tempfile.TemporaryDirectory() as root:
        benchmark(root=root, limit=8, splits=["dev"])  # warm-up: the temporary Prefect server starts
        with forward_timer(modules) as spent:
            started = time.perf_counter()
            cold = benchmark(root=root, **params)
            cold_s = time.perf_counter() - started
        started = time.perf_counter()
        warm = benchmark(root=root, **params)
        warm_s = time.perf_counter() - started
    model_s = spent[0]
    assert warm["forward_passes"] == 0
    return [
        verdict(
            "pipeline overhead (wall / model time - 1)",
            cold_s / model_s - 1,
            "<= 0.10",
            cold_s / model_s - 1 <= 0.10,
            f"wall {cold_s:.1f} s, inside forward passes {model_s:.1f} s, {images} images, "
            f"{cold['forward_passes']} passes",
        ),
        verdict(
            "cached rerun / cold run",
            warm_s / cold_s,
            "<= 0.05",
            warm_s / cold_s <= 0.05,
            f"cached {warm_s:.2f} s, cold {cold_s:.1f} s, {warm['shards_cached']} shards from cache",
        ),
    ]


def synthetic_predictions(root: Path, rows: int, classes: int = 100, seed: int = 0) -> None:
    """`rows` prediction rows (7 component subsets x images) in the real layout and schema."""
    from storage.io import write_table
    from storage.paths import shard_path
    from storage.schemas import PREDICTIONS

    rng = np.random.default_rng(seed)
    subsets = ["image", "description", "prediction", "image+description", "image+prediction",
               "description+prediction", "image+description+prediction"]  # fmt: skip
    per_shard = 700_000
    keys = {
        "dataset": "synthetic",
        "split": "test",
        "subset": f"all-{rows}",
        "encoder": "e",
        "describer": "d",
        "prompts": "p",
        "gen": "g",
        "shortlist": "none",
        "class_weights": "templates",
    }
    for shard, start in enumerate(range(0, rows, per_shard)):
        n = min(per_shard, rows - start)
        images = (np.arange(start, start + n) // len(subsets)).astype(np.int64)
        labels = images % classes
        top5 = rng.integers(0, classes, size=(n, 5))
        hit = rng.random(n) < 0.6
        top5[hit, 0] = labels[hit]
        flat_top = pa.array(top5.reshape(-1), pa.int64())
        flat_scores = pa.array(np.sort(rng.random((n, 5)).astype(np.float32))[:, ::-1].reshape(-1))
        offsets = pa.array(np.arange(0, 5 * n + 1, 5, dtype=np.int32))
        table = pa.table(
            {
                "image_id": pa.array(images.astype(str)),
                "label": pa.array(labels),
                "components": pa.array([subsets[i % len(subsets)] for i in range(start, start + n)]),
                "top5": pa.ListArray.from_arrays(offsets, flat_top),
                "scores": pa.ListArray.from_arrays(offsets, flat_scores),
            },
            schema=PREDICTIONS.schema(),
        )
        write_table(shard_path(str(root), PREDICTIONS, keys, shard), table)


def queries(sizes: tuple[int, ...] = (1_000_000, 3_000_000, 10_000_000)) -> list[dict]:
    from storage.catalog import connect, create_views

    times = {}
    for rows in sizes:
        with tempfile.TemporaryDirectory() as root:
            synthetic_predictions(Path(root), rows)
            with connect(root) as con:
                create_views(con, root)
                started = time.perf_counter()
                con.sql("select * from metrics").fetchall()
                times[rows] = time.perf_counter() - started
    largest, smallest = max(sizes), min(sizes)
    linearity = (times[largest] / times[smallest]) / (largest / smallest)
    raw = ", ".join(f"{r / 1e6:g}M rows {t:.2f} s" for r, t in times.items())
    return [
        verdict(
            f"metrics query, {largest / 1e6:g}M rows (s)", times[largest], "< 10 s", times[largest] < 10, raw
        ),
        verdict("time per row, largest / smallest", linearity, "<= ~1.2 (linear)", linearity <= 1.2, raw),
    ]


def offline(batch_sizes: tuple[int, ...] = (16, 64, 128), images: int = 256) -> list[dict]:
    from backends.registry import load_encoder
    from sources.images import decode_manifest
    from sources.registry import open_dataset

    encoder = load_encoder("offline:conse-lite0-minilm")
    pictures, _ = decode_manifest(open_dataset("cifar10", "dev").manifest(list(range(images))))
    model = encoder.classifier.model
    batch = torch.stack([encoder.classifier.preprocess(p) for p in pictures[: max(batch_sizes)]])
    results, best = [], (0.0, None)
    for size in batch_sizes:
        for layout in ("contiguous", "channels_last"):
            x = batch[:size].contiguous(
                memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
            )
            m = model.to(
                memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
            )
            with torch.inference_mode():
                m(x)
                started = time.perf_counter()
                for _ in range(3):
                    m(x)
            rate = 3 * size / (time.perf_counter() - started)
            print(f"  raw Lite0 forward, batch {size:>3}, {layout:<13} {rate:7.1f} images/s", flush=True)
            best = max(best, (rate, (size, layout)))
    model.to(memory_format=torch.contiguous_format)
    started = time.perf_counter()
    encoder.encode_images(pictures)
    end_to_end = images / (time.perf_counter() - started)
    results.append(
        verdict(
            "offline encoder images/s / best raw forward",
            end_to_end / best[0],
            "(report)",
            True,
            f"encode_images {end_to_end:.1f}/s (resize and text side included); "
            f"raw best {best[0]:.1f}/s at {best[1]}",
        )
    )
    return results


SECTIONS = {"pipeline": pipeline, "queries": queries, "offline": offline}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--images", type=int, default=10_000, help="images of CIFAR-10 test for `pipeline`")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    for name in args.only:
        print(f"== {name}", flush=True)
        SECTIONS[name](args.images) if name == "pipeline" else SECTIONS[name]()


if __name__ == "__main__":
    with (
        contextlib.redirect_stderr(io.StringIO())
        if os.environ.get("WDYS_BENCH_QUIET")
        else contextlib.nullcontext()
    ):
        main()
