"""Performance figures of wdys, each measured side by side in one run and printed as a ratio with
its target (these machines are noisy: only ratios from one run are compared).

    python -m perf.bench [--only SECTION ...] [--images N] [--clip-images N] ...

Sections (issue "Performance"; results and the machine they ran on go in docs/BENCHMARKS.md):
- served: the `openai:` describer against a local server answering in 0.5 s, 64 at once (target:
  >= 90% of its 128 requests/s), then refusing above 16 in flight (>= 80% of 32/s, nothing lost);
  perf/served.py; vllm: the same through a `vllm:` describer and the server it manages (the
  stand-in `vllm`), with server start and stop; perf/vllm_figure.py;
- clip_benchmark: the flow's image-only baseline against `clip_benchmark eval` on CIFAR-10 test,
  ViT-B-32 with random weights, batch 64, cold processes, the median of alternating runs of each side
  (target: flow <= 0.95x); perf/clip_figure.py;
- pipeline: the offline-profile benchmark flow, cold, against the time spent inside model forward
  passes during the same run (target: overhead <= 10%), then fully cached (target: <= 5% of cold);
- memory: peak memory of the flow process on CIFAR-10 test repeated 1x and 10x (target: <= 1.2x);
- describer: the transformers describer against a bare `generate` loop at batch sizes 1, 8 and 16
  (target: within 10%), and the speed-up of batching;
- queries: the metrics view over 1M, 3M and 10M synthetic prediction rows (target: < 10 s at 10M,
  linear in rows);
- offline: the offline encoder's images/s through `encode_images` against its raw forward passes,
  at several batch sizes, with and without channels_last (perf.offline_trials tries more);
- remote_bytes: bytes downloaded from the hub stand-in by a `--limit` trial, a full run and a second
  full run of a 4-shard `wds:` copy and a Parquet export of 1,000 images of 10 kB or more (targets:
  <= 0.25x, <= 1.1x, <= 0.05x the copy); perf/remote_bytes.py;
- sampler: the seeded class-description sampler's time per decoding step against plain multinomial
  sampling at batch 16 with a 262k vocabulary (target: <= 1.5x), on the CPU and on a GPU if any;
- startup: `wdys query` / bare duckdb (<= 2x), a cached `wdys run` outside its flow / a trivial
  Prefect flow (<= 1.5x); perf/startup.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from core.settings import COMMAND_LINE, apply_defaults
from perf.clip_figure import compare as clip_compare
from perf.figures import run_flow_process, verdict
from perf.remote_bytes import figure as remote_bytes_figure
from perf.served import figure as served_figure
from perf.startup import startup
from perf.vllm_figure import figure as vllm_figure

apply_defaults(COMMAND_LINE)  # the command line's offline Prefect settings


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


TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "size": 64,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def tiny_open_clip_dir(folder: Path) -> str:
    """A small random open_clip model in the `local-dir:` layout; returns its encoder id. The
    memory figure is about the data the flow holds, not the model, so a small model keeps the 10x
    run short."""
    import json

    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_OPEN_CLIP["model_cfg"])
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return f"open_clip:local-dir:{folder}"


def repeated_cifar10_test(folder: Path, times: int) -> str:
    """CIFAR-10 test `times` over, as `test-0000i-of-0000n.parquet` files (the Hugging Face layout of
    a large split); returns the dataset id."""
    import shutil

    from sources.registry import shared_datasets_dir

    source = shared_datasets_dir() / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(times):
        shutil.copyfile(source / "test.parquet", folder / f"test-{i:05d}-of-{times:05d}.parquet")
    shutil.copyfile(source / "classes.json", folder / "classes.json")
    return f"parquet:{folder}"


def memory(scales: tuple[int, int] = (1, 10)) -> list[dict]:
    """Peak memory of the flow process on CIFAR-10 test and on it repeated `scales[1]` times
    (image-only flow, small random open_clip model, default shard size)."""
    small, large = scales
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        encoder = tiny_open_clip_dir(Path(tmp) / "model")
        for times in scales:
            dataset = repeated_cifar10_test(Path(tmp) / f"x{times}", times)
            args = ["--datasets", dataset, "--splits", "test", "--image-only", "--encoders", encoder]
            args += ["--class-weights", "templates", "--root", str(Path(tmp) / f"root{times}")]
            peak, wall, out = run_flow_process(args)
            assert f" {10_000 * times} " in out, "the run did not cover every image"
            peaks[times] = (peak, wall)
            print(
                f"  {times:>2}x ({10_000 * times} images): peak {peak:.0f} MiB, wall {wall:.1f} s", flush=True
            )
    ratio = peaks[large][0] / peaks[small][0]
    raw = ", ".join(f"{t}x: {p:.0f} MiB in {w:.0f} s" for t, (p, w) in peaks.items())
    return [verdict(f"peak memory {large}x images / {small}x", ratio, "<= 1.2", ratio <= 1.2, raw)]


def describer(images: int, max_new_tokens: int, on_cpu: bool = False) -> list[dict]:
    """The transformers describer against a bare `generate` loop (perf.describer_bench) at
    batch sizes 1, 8 and 16, SmolVLM-256M's architecture with random weights. Needs a GPU: on these
    2 cores one image takes about 30 s, so it runs on the CPU only when asked (`--describer-on-cpu`),
    with one 512 px tile per image instead of the published 4x4 tiling."""
    from perf import describer_bench

    if not (torch.cuda.is_available() or on_cpu):
        print("  skipped: no GPU (about 30 s per image on 2 cores); --describer-on-cpu runs it anyway")
        return []
    splitting = torch.cuda.is_available()
    rows = describer_bench.run(images, max_new_tokens, (1, 8, 16), image_splitting=splitting)
    return describer_bench.report(rows)


def _step_seconds(step: Callable[[], torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _sampler_sides(seeded: Callable, scores: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """One decoding step's token choice: by the seeded sampler, and by plain multinomial sampling."""
    ids = torch.zeros(scores.shape[0], 1, dtype=torch.long, device=scores.device)
    return {
        "seeded": lambda: seeded(ids, scores).argmax(-1),
        "multinomial": lambda: torch.multinomial(torch.softmax(scores / 0.99, dim=-1), 1),
    }


def sampler(batch: int = 16, vocab: int = 262_144, steps: int = 30) -> list[dict]:
    """The seeded class-description sampler (`backends.hf_sampling.SeededGumbel`) against plain
    multinomial sampling (softmax, then `torch.multinomial`) per decoding step at batch 16 and
    Gemma-3's 262k vocabulary, alternating step by step, the median of each (target: <= 1.5x), on
    the CPU and, where there is one, the GPU."""
    from backends.hf_sampling import SeededGumbel

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("  GPU: not measured, no device on this machine")
    figures = []
    for device in devices:
        sides = _sampler_sides(SeededGumbel(range(batch), 0.99), torch.randn(batch, vocab, device=device))
        times: dict[str, list[float]] = {name: [] for name in sides}
        for step in range(steps + 2):  # the first two of each warm up
            for name, side in sides.items():
                spent = _step_seconds(side, device)
                if step >= 2:
                    times[name].append(spent)
        seeded_s, plain_s = (float(np.median(times[n])) for n in ("seeded", "multinomial"))
        ratio = seeded_s / plain_s
        raw = f"{seeded_s * 1e3:.2f} ms vs {plain_s * 1e3:.2f} ms per step, batch {batch}, vocab {vocab}"
        figures.append(
            verdict(f"sampler step / multinomial ({device.type})", ratio, "<= 1.5x", ratio <= 1.5, raw)
        )
    return figures


SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "served": lambda a: served_figure(a.served_images),
    "vllm": lambda a: vllm_figure(a.served_images),
    "clip_benchmark": lambda a: clip_compare(images=a.clip_images, runs=a.clip_runs),
    "pipeline": lambda a: pipeline(a.images),
    "memory": lambda a: memory(tuple(a.memory_scales)),
    "describer": lambda a: describer(a.describer_images, a.describer_tokens, a.describer_on_cpu),
    "queries": lambda a: queries(),
    "offline": lambda a: offline(),
    "sampler": lambda a: sampler(),
    "remote_bytes": lambda a: remote_bytes_figure(),
    "startup": lambda a: startup(a.startup_runs),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--images", type=int, default=2_000, help="CIFAR-10 test images for `pipeline`")
    parser.add_argument("--clip-images", type=int, default=None, help="sample for `clip_benchmark` (all)")
    parser.add_argument("--clip-runs", type=int, default=2, help="alternating cold runs of each side")
    parser.add_argument(
        "--served-images", type=int, default=512, help="images for `served` (2 requests each)"
    )
    parser.add_argument("--memory-scales", type=int, nargs=2, default=[1, 10], help="times CIFAR-10 test")
    parser.add_argument("--describer-images", type=int, default=16)
    parser.add_argument("--describer-tokens", type=int, default=16, help="max_new_tokens of `describer`")
    parser.add_argument("--describer-on-cpu", action="store_true", help="run `describer` without a GPU")
    parser.add_argument("--startup-runs", type=int, default=3, help="alternating processes of each side")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    figures = []
    for name in args.only:
        print(f"== {name}", flush=True)
        figures += SECTIONS[name](args)
    print("\n== summary")
    for f in figures:
        state = "MET" if f["met"] else "MISSED"
        print(f"{f['figure']:<48} {f['value']:>10.3f}   target {f['target']:<18} {state}")


if __name__ == "__main__":
    with (
        contextlib.redirect_stderr(io.StringIO())
        if os.environ.get("WDYS_BENCH_QUIET")
        else contextlib.nullcontext()
    ):
        main()
