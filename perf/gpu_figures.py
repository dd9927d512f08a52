"""Figure 3 of issue 13, on one GPU, inside 10 minutes, from random weights built from configs (no
downloads): prints each figure with its target and MET or MISSED, and writes the rows as JSON.

- encoder: the image-only flow against `clip_benchmark eval` with its defaults (autocast), ViT-B-32
  and ViT-L-14 random weights, CIFAR-10 test (target: flow <= 1.0x; perf/clip_figure.py).
  Needs the project's environment and the peer venv (`.venv-clip-benchmark`), as `make bench` does.
- describer: the `hf:` describer against a bare `generate` loop at batch 1, 8 and 32 (target: ours
  <= 1.05x bare each), Qwen2-VL-2B-Instruct's architecture with random weights in bf16, and the speed-up
  of the automatic batch size over batch 1. Needs torch, transformers, pillow and pyarrow only.

    python -m perf.gpu_figures [--only encoder describer] [--images 64] [--max-new-tokens 16]
        [--json OUT.json]

Both describer paths describe the same CIFAR-10 test images scaled to 448 px (256 image tokens
each), with the same greedy settings and exactly `--max-new-tokens` tokens (the saved generation
config sets min_new_tokens); each is warmed on one batch, then timed twice in alternating order,
the faster run counting. The bare loop runs the processor on the CPU, as a plain script would.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

PROMPT = "Describe this image in one sentence."
DEVICE = "cuda"  # a dry run of the describer part may set "cpu" (with a shrunken TEXT/VISION)
EDGE = 448  # px: (448 / 14)^2 patches, merged 2x2: 256 image tokens
# Qwen/Qwen2-VL-2B-Instruct config.json
TEXT = {
    "model_type": "qwen2_vl_text",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
VISION = {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "hidden_size": 1536}
PATCHES = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def build_qwen2_vl_2b(path: Path, max_new_tokens: int) -> Path:
    """Random Qwen2-VL-2B (bf16) with a processor of the real patch sizes; saved for both paths."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from fakes.tiny_vlms import qwen2_vl_processor, qwen2_vl_token_ids

    processor = qwen2_vl_processor(14)
    tok = processor.tokenizer
    config = Qwen2VLConfig(
        text_config=TEXT
        | {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": None},
        vision_config=VISION | PATCHES,
        **qwen2_vl_token_ids(tok),
    )
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = tok.eos_token_id, tok.pad_token_id
    gen.min_new_tokens = max_new_tokens  # both paths generate exactly this many tokens
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def cifar_images(n: int) -> list:
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from sources.registry import shared_datasets_dir

    rows = pq.read_table(shared_datasets_dir() / "cifar10" / "test.parquet", columns=["img"]).slice(0, n)
    return [
        Image.open(io.BytesIO(r["bytes"])).convert("RGB").resize((EDGE, EDGE))
        for r in rows["img"].to_pylist()
    ]


def bare_loop(model, processor, images: list, batch: int, max_new_tokens: int) -> list[str]:
    """What a plain script does: processor on the CPU, tensors to the GPU, generate, decode."""
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    answers = []
    for start in range(0, len(images), batch):
        part = [[im] for im in images[start : start + batch]]
        inputs = processor(text=[text] * len(part), images=part, padding=True, return_tensors="pt")
        inputs = inputs.to(DEVICE, dtype=torch.bfloat16)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        answers += processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def timed(fn: Callable[[], object]) -> float:
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def alternating(paths: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Each path timed twice, in alternating order (a, b, b, a)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for order in (list(paths), list(paths)[::-1]):
        for name in order:
            times[name].append(timed(paths[name]))
    return times


def describer(images: int, max_new_tokens: int, batches: tuple[int, ...] = (1, 8, 32)) -> list[dict]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from backends.hf_describer import HFDescriber
    from perf.figures import verdict

    pictures = cifar_images(images)
    rows, speeds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_qwen2_vl_2b(Path(tmp) / "qwen2-vl-2b-random", max_new_tokens)
        processor = AutoProcessor.from_pretrained(folder)
        processor.tokenizer.padding_side = "left"
        bare = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16).to(DEVICE).eval()
        bare_loop(bare, processor, pictures[:8], 8, max_new_tokens)  # warm-up
        for batch in batches:
            ours = HFDescriber.load(str(folder), max_new_tokens=max_new_tokens, batch_size=batch)
            ours.describe(pictures[:batch], PROMPT)  # warm-up
            times = alternating(
                {
                    "ours": partial(ours.describe, pictures, PROMPT),
                    "bare": partial(bare_loop, bare, processor, pictures, batch, max_new_tokens),
                }
            )
            best = {name: min(t) for name, t in times.items()}
            speeds[batch] = images / best["ours"]
            ratio = best["ours"] / best["bare"]
            raw = f"batch {batch}, {images} images: ours {times['ours']} s, bare {times['bare']} s"
            rows.append(
                verdict(f"hf describer / bare generate, batch {batch}", ratio, "<= 1.05", ratio <= 1.05, raw)
            )
        os.environ["WDYS_HF_BATCH_SIZE"] = "auto"
        auto = HFDescriber.load(str(folder), max_new_tokens=max_new_tokens)
        auto.describe(pictures, PROMPT)  # warm-up, and the first sizing of the automatic batch
        auto_speed = images / min(timed(partial(auto.describe, pictures, PROMPT)) for _ in range(2))
        raw = f"automatic batch {auto._batch_size}: {auto_speed:.2f} images/s; by batch: {speeds}"
        rows.append(
            verdict(
                "hf describer, automatic batch / batch 1",
                auto_speed / speeds[batches[0]],
                "(report)",
                True,
                raw,
            )
        )
    return rows


def encoder() -> list[dict]:
    from perf.clip_figure import compare

    return [
        row for arch in ("ViT-B-32", "ViT-L-14") for row in compare(arch, runs=1, device="cuda", target=1.0)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perf.gpu_figures", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=("encoder", "describer"), default=["describer", "encoder"]
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("figure 3 needs a GPU: none is visible (torch.cuda.is_available() is False)")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for part in args.only:
        started = time.perf_counter()
        try:
            rows += describer(args.images, args.max_new_tokens) if part == "describer" else encoder()
        except Exception as exc:  # one part failing (e.g. no peer venv) must not lose the other's numbers
            print(f"  {part} failed: {type(exc).__name__}: {exc}", flush=True)
            rows.append({"figure": part, "error": f"{type(exc).__name__}: {exc}"})
        print(f"  {part}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
