"""A prepared GPU comparison: the same open VLM as `vllm:` (a vLLM server the describer starts) and as
`hf:` (transformers' batched `generate`), on the same CIFAR-10 images with the description prompt:
images per second, and the mean answer length (tokens and words) so that a speed-up is not bought
with shorter answers. Each side's first call (weights loading, the server's start) is timed apart.

Needs a GPU, the project's environment, `.venv-vllm` (`make vllm`) or $WDYS_VLLM, the model in the
Hugging Face cache (or the hub), and the images: the shared Parquet or a folder made by
`python -m perf.devdata OUT --images N` (`--images-dir`). Not part of `make bench`.

    python -m perf.vllm_gpu --model HuggingFaceTB/SmolVLM-256M-Instruct --images 256 [--images-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from PIL import Image

from perf.devdata import default_parquet, read_dir, read_parquet


def images_from(images_dir: str | None, n: int) -> list[Image.Image]:
    if images_dir:
        return read_dir(Path(images_dir), n)
    return [image for image, _ in read_parquet(default_parquet(), n)]


def side(model_id: str, images: list[Image.Image], batch: int) -> dict:
    """First call (load or start) timed apart; then every image described, `batch` per call."""
    from backends.registry import load_describer
    from method.prompts import DESCRIPTION_PROMPT

    started = time.perf_counter()
    describer = load_describer(model_id)
    describer.describe(images[:1], DESCRIPTION_PROMPT)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    answers = []
    for i in range(0, len(images), batch):
        answers += describer.describe(images[i : i + batch], DESCRIPTION_PROMPT)
    wall = time.perf_counter() - started
    texts = [a.text or "" for a in answers]
    tokens = [a.completion_tokens for a in answers if a.completion_tokens is not None]
    return {
        "model": model_id,
        "first_call_s": first_s,
        "images_per_s": len(images) / wall,
        "errors": sum(a.error is not None for a in answers),
        "mean_words": statistics.fmean(len(t.split()) for t in texts),
        "mean_tokens": statistics.fmean(tokens) if tokens else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.vllm_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolVLM-256M-Instruct")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--images-dir", default=None)
    parser.add_argument("--batch", type=int, default=256, help="images per describe call (one shard)")
    args = parser.parse_args(argv)
    images = images_from(args.images_dir, args.images)
    rows = []
    for scheme in ("hf", "vllm"):
        rows.append(side(f"{scheme}:{args.model}", images, args.batch))
        print(rows[-1], flush=True)  # the hf: model is released when the server starts on its device
    hf, vllm = rows
    print(
        f"vllm: / hf: images per second {vllm['images_per_s'] / hf['images_per_s']:.2f}x "
        f"({vllm['images_per_s']:.1f} vs {hf['images_per_s']:.1f}); mean words {vllm['mean_words']:.1f} vs "
        f"{hf['mean_words']:.1f}; first call {vllm['first_call_s']:.0f} s vs {hf['first_call_s']:.0f} s; "
        f"errors {vllm['errors']} vs {hf['errors']}; {len(images)} images"
    )
    from backends.vllm_server import stop_all

    stop_all()


if __name__ == "__main__":
    main()
