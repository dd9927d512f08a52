"""The flow's image-only baseline against `clip_benchmark eval` (LAION's CLIP_benchmark), side by side:
figure 2 of issue 13 on the CPU and figure 3's encoder rows on a GPU.

Both sides get the same CIFAR-10 test images (the Parquet bytes, not re-encoded), the same open_clip
architecture with the same random checkpoint (same compute as pretrained weights; hashed equal as
each side loads it), batch size and class-weight work, and each run is a cold process timed whole.
Runs alternate sides (peer, flow, flow, peer, ...) and the figure is the ratio of the medians, so a
slow minute of a shared machine does not land on one side only.

On the CPU both run float32 (`--no_amp`: CLIP_benchmark would autocast to bf16 there). On a GPU both
run with their defaults: CLIP_benchmark autocasts, the flow's encoder autocasts as its identity says
(`+amp-bf16` under $WDYS_CLIP_PRECISION=auto).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path


def image_only_metrics(root: Path) -> dict:
    """The image-only baseline's row of the `metrics` view (templates weighting)."""
    import duckdb

    with duckdb.connect(str(root / "wdys.duckdb"), read_only=True) as con:
        return con.sql("select * from metrics where describer = 'none'").to_arrow_table().to_pylist()[0]


def compare(
    arch: str = "ViT-B-32",
    images: int | None = None,
    runs: int = 2,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "cpu",
    target: float = 0.95,
) -> list[dict]:
    """`runs` cold runs of each side, alternating; figure = median flow wall / median peer wall."""
    from perf import clip_benchmark_peer as peer
    from perf.figures import run_flow_process, verdict
    from sources.registry import shared_datasets_dir

    python = peer.ensure_env()
    sample = ["--limit", str(images), "--sample-seed", "0"] if images else []
    walls: dict[str, list[float]] = {"flow": [], "clip_benchmark": []}
    top1: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = peer.random_checkpoint(arch, folder / f"{arch}-random.safetensors")
        ours_digest, theirs_digest = peer.weights_digests(python, arch, checkpoint)
        if ours_digest != theirs_digest:  # checked before timing: both sides must run the same weights
            raise RuntimeError(f"the two sides load different weights: {ours_digest} != {theirs_digest}")
        wds = peer.export_webdataset(
            shared_datasets_dir() / "cifar10" / "test.parquet",
            folder / "cifar10",
            shards=workers,
            limit=images,
            sample_seed=0 if images else None,
        )
        for run in range(runs):
            for side in ("clip_benchmark", "flow") if run % 2 == 0 else ("flow", "clip_benchmark"):
                if side == "clip_benchmark":
                    theirs = peer.run_clip_benchmark(
                        python, wds, checkpoint, arch, batch_size, workers, amp=device != "cpu", device=device
                    )
                    wall, top1[side], count = theirs["wall_s"], 100 * theirs["acc1"], theirs["images"]
                else:
                    root = folder / f"root{run}"  # cold: nothing cached
                    args = [
                        "--splits",
                        "test",
                        "--image-only",
                        "--encoders",
                        f"open_clip:{arch}/{checkpoint}",
                    ]
                    args += ["--class-weights", "templates", "--root", str(root), *sample]
                    _, wall, _ = run_flow_process(args)
                    top1[side] = image_only_metrics(root)["top1"]
                walls[side].append(wall)
                print(f"  run {run + 1} {side:<15} {wall:7.1f} s, top-1 {top1[side]:.2f} %", flush=True)
    ratio = statistics.median(walls["flow"]) / statistics.median(walls["clip_benchmark"])
    raw = (
        f"{arch}, {count} images, batch {batch_size}, {device}; "
        f"flow {[round(w, 1) for w in walls['flow']]} s, "
        f"clip_benchmark {[round(w, 1) for w in walls['clip_benchmark']]} s (median of each); "
        f"top-1 {top1['flow']:.2f} % vs "
        f"{top1['clip_benchmark']:.2f} %"
    )
    # float32 on the CPU computes the same on both sides; under autocast the two differ in rounding
    same = abs(top1["flow"] - top1["clip_benchmark"]) < (0.05 if device == "cpu" else 0.5)
    name = f"image-only flow / clip_benchmark, {arch}, {device}"
    return [
        verdict(name, ratio, f"<= {target}", ratio <= target, raw),
        verdict(f"same top-1 as clip_benchmark, {arch}, {device}", float(same), "1", same, raw),
    ]
