"""A few real CIFAR-10 photographs for benchmarks, from the shared Parquet or a folder of PNGs.

Benchmark machines with a GPU have no `shared/`: export a handful of images here, carry the folder
there, and point the benchmark at it with `--images-dir`.

    python -m perf.devdata OUT_DIR [--images N] [--parquet PATH]

Deliberately imports neither `sources` (fsspec) nor prefect, so that it runs on a bare torch box.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from itertools import cycle, islice
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LABELS_FILE = "labels.csv"


def default_parquet() -> Path:
    """The same place `sources.benchmarks.shared_datasets_dir` looks, without importing it."""
    env = os.environ.get("WDYS_SHARED_DATASETS")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return root / "cifar10" / "dev.parquet"


def read_parquet(path: Path, n: int) -> list[tuple[Image.Image, int]]:
    """The first `n` rows of an HF-layout image Parquet (`img` {bytes, path}, `label`)."""
    import pyarrow.parquet as pq  # here: a box fed by --images-dir needs no pyarrow

    rows: list[dict] = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=max(1, n), columns=["img", "label"]):
        rows.extend(batch.to_pylist())
        if len(rows) >= n:
            break
    if len(rows) < n:
        raise ValueError(f"{path} has only {len(rows)} rows, {n} asked for")
    return [(Image.open(io.BytesIO(row["img"]["bytes"])).convert("RGB"), row["label"]) for row in rows[:n]]


def _class_names(parquet: Path) -> list[str]:
    names = parquet.parent / "classes.json"
    return json.loads(names.read_text()) if names.exists() else []


def export_images(out_dir: Path, n: int, parquet: Path | None = None) -> Path:
    """Writes `n` PNGs and a `labels.csv` (file, label, class) to `out_dir`; returns it."""
    parquet = parquet or default_parquet()
    names = _class_names(parquet)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / LABELS_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "class"])
        for i, (image, label) in enumerate(read_parquet(parquet, n)):
            name = f"{i:05d}.png"
            image.save(out_dir / name)
            writer.writerow([name, label, names[label] if label < len(names) else ""])
    return out_dir


def read_dir(path: Path, n: int) -> list[Image.Image]:
    """`n` images from a folder in name order, cycled when it holds fewer (a few carried images
    still feed a large run: the benchmark measures compute, not accuracy)."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    images = [Image.open(p).convert("RGB") for p in files[:n]]
    return list(islice(cycle(images), n))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--parquet", type=Path, default=None, help="default: shared cifar10/dev.parquet")
    args = parser.parse_args(argv)
    out = export_images(args.out_dir, args.images, args.parquet)
    print(f"wrote {args.images} images and {LABELS_FILE} to {out}")


if __name__ == "__main__":
    main()
