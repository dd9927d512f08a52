"""The transformers describer (`HFDescriber`) against a bare `model.generate` loop, side by side.

The model is SmolVLM-256M-Instruct's architecture with random weights (same compute as the real
ones; no hub access needed), built offline with its processor, saved with `save_pretrained` and
loaded back through `HFDescriber.load`, the product's own loading code. For each batch size both
paths describe the same real CIFAR-10 images with the same greedy settings; the figure is the
ratio of their wall times (target: ours <= 1.10 x bare).

    PYTHONPATH=. python -m perf.describer_bench [--images N] [--max-new-tokens M]
        [--batch-sizes 1 8 16] [--device cpu|cuda] [--images-dir DIR] [--no-image-splitting]
        [--repeats R] [--warmup-images K] [--json OUT]

Both paths get the same images, batches, dtype, device and greedy settings, and generate the same
number of tokens (the saved generation config sets min_new_tokens = max_new_tokens; the report
checks the counts and whether the answers are identical). Time inside `generate()` is clocked
separately, so the table also shows each path's own overhead outside the model.

Architecture numbers: HuggingFaceTB/SmolVLM-256M-Instruct `config.json` (text: SmolLM2-135M,
Llama-style; vision: SigLIP base patch16/512; connector pixel shuffle x4, 64 tokens a 512 px tile),
`preprocessor_config.json` (tiles of 512 px after resizing the longest edge to 2048, splitting on)
and `processor_config.json` (image_seq_len 64). Imports no prefect, open_clip or duckdb: it runs on
a box with only torch, transformers, tokenizers and pillow (pyarrow too for the Parquet source).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from backends.device import pick_dtype
from backends.hf_describer import HFDescriber
from perf.devdata import default_parquet, read_dir, read_parquet
from perf.figures import verdict

PROMPT = "Describe this image in one sentence."
TARGET_RATIO = 1.10

# SmolVLM-256M-Instruct config.json, text_config (SmolLM2-135M) and vision_config (SigLIP b/16 @ 512).
TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 49280,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "initializer_range": 0.041666666666666664,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "tie_word_embeddings": False,
}
VISION_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 512,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-06,
}
SCALE_FACTOR = 4
IMAGE_SEQ_LEN = 64  # (512 / 16)^2 patches / 4^2 after the pixel shuffle
# preprocessor_config.json: the longest edge goes to 2048, then 512 px tiles plus a global view.
IMAGE_PROCESSOR = {
    "do_convert_rgb": True,
    "do_image_splitting": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "max_image_size": {"longest_edge": 512},
    "resample": 1,  # PIL LANCZOS
    "rescale_factor": 1 / 255,
    "size": {"longest_edge": 2048},
}

# SmolVLM's tokenizer: GPT-2 style byte-level BPE, 49152 ids, then its added tokens up to 49279.
PAD, BOS, EOS = "<|im_end|>", "<|im_start|>", "<end_of_utterance>"
BASE_SPECIAL = ["<|endoftext|>", BOS, PAD]
ADDED_SPECIAL = [
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
    "<fake_token_around_image>",
    "<image>",
    EOS,
]
# SmolVLM-256M-Instruct's chat_template.json, in substance.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CORPUS = [
    "User: Describe this image in one sentence. Assistant: A photo of a cat sitting on the grass.",
    "a small airplane, an automobile, a bird, a deer, a dog, a frog, a horse, a ship and a truck",
]


# Model directory ---------------------------------------------------------------------------------


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on two sentences, padded with filler ids to SmolVLM's 49280 so that
    every id the random model emits decodes, and the special tokens sit where SmolVLM has them."""
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=BASE_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    trained.train_from_iterator(CORPUS * 4, trainer)
    model = json.loads(trained.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    base_size = TEXT_CONFIG["vocab_size"] - len(ADDED_SPECIAL)
    filler = (f"w{i}" for i in range(base_size))
    while len(vocab) < base_size:
        token = next(filler)
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(BASE_SPECIAL + ADDED_SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, chat_template=CHAT_TEMPLATE
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, image_splitting: bool = True) -> Idefics3Processor:
    settings = {**IMAGE_PROCESSOR, "do_image_splitting": image_splitting}
    return Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**settings),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, min_new_tokens: int) -> Idefics3ForConditionalGeneration:
    """Random weights. `min_new_tokens` in the saved generation config makes both paths emit exactly
    max_new_tokens per image (random weights would otherwise stop at EOS at arbitrary points)."""
    ids = tokenizer.convert_tokens_to_ids
    text = {**TEXT_CONFIG, "bos_token_id": ids(BOS), "eos_token_id": ids(EOS), "pad_token_id": ids(PAD)}
    config = Idefics3Config(
        text_config=text,
        vision_config=VISION_CONFIG,
        image_token_id=ids("<image>"),
        scale_factor=SCALE_FACTOR,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = ids(BOS), ids(EOS), ids(PAD)
    generation.min_new_tokens = min_new_tokens
    return model


def save_model_dir(path: Path, min_new_tokens: int, image_splitting: bool = True) -> Path:
    """Model and processor saved side by side, as a hub snapshot would be."""
    tokenizer = build_tokenizer()
    build_model(tokenizer, min_new_tokens).save_pretrained(path)
    build_processor(tokenizer, image_splitting).save_pretrained(path)
    return path


# The two paths -----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GenerateClock:
    """Seconds spent inside one model's `generate()`, installed on the instance: a path's wall time
    less this is its own overhead (processor, decoding), which noise in the forward passes hides."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.seconds = 0.0
        self._generate = model.generate
        self._device = model.device
        model.generate = self  # an instance attribute shadows the method

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        _sync(self._device)
        started = time.perf_counter()
        output = self._generate(*args, **kwargs)
        _sync(self._device)
        self.seconds += time.perf_counter() - started
        return output


Described = tuple[list[str], int]  # answer texts, tokens generated


def _timed(fn: Callable[[], Described], clock: GenerateClock, device: torch.device) -> dict:
    """Wall seconds of one path, its seconds inside generate, and what it answered."""
    _sync(device)
    inside = clock.seconds
    started = time.perf_counter()
    texts, tokens = fn()
    _sync(device)
    seconds = time.perf_counter() - started
    return {"s": seconds, "generate_s": clock.seconds - inside, "tokens": tokens, "texts": texts}


def _completion_tokens(row: torch.Tensor, eos_id: int) -> int:
    hits = (row == eos_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(row)


def bare_describe(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence[Image.Image],
    prompt: str,
    batch_size: int,
    max_new_tokens: int,
) -> Described:
    """What a transformers user writes: chat template, left-padded processor call, generate, decode."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    eos_id = model.generation_config.eos_token_id
    texts: list[str] = []
    tokens = 0
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(
            text=[text] * len(chunk), images=chunk, padding=True, padding_side="left", return_tensors="pt"
        ).to(model.device, dtype=model.dtype)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :].cpu()
        lengths = [_completion_tokens(row, eos_id) for row in new]
        tokens += sum(lengths)
        for row, n in zip(new, lengths, strict=True):
            texts.append(processor.decode(row[:n], skip_special_tokens=True).strip())
    return texts, tokens


def ours_describe(describer: HFDescriber, images: Sequence[Image.Image], prompt: str) -> Described:
    """The product path; an error answer fails the benchmark loudly rather than timing nothing."""
    answers = describer.describe(images, prompt)
    errors = [a.error for a in answers if a.error]
    if errors:
        raise RuntimeError(f"describer answered {len(errors)} errors, first: {errors[0]}")
    return [a.text or "" for a in answers], sum(a.completion_tokens or 0 for a in answers)


# Measurement -------------------------------------------------------------------------------------


def image_token_count(processor: ProcessorMixin, image: Image.Image, prompt: str = PROMPT) -> tuple[int, int]:
    """(<image> placeholders, whole prompt length) for one image: what the vision tiles cost."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    return int((ids == image_id).sum()), len(ids)


def load_images(n: int, images_dir: Path | None = None) -> list[Image.Image]:
    if images_dir is not None:
        return read_dir(images_dir, n)
    parquet = default_parquet()
    if not parquet.exists():
        raise FileNotFoundError(f"no {parquet}: export images with perf.devdata, pass --images-dir")
    return [image for image, _ in read_parquet(parquet, n)]


def _measure_batch_size(
    describer: HFDescriber,
    bare_model: PreTrainedModel,
    bare_processor: ProcessorMixin,
    bare_clock: GenerateClock,
    images: list[Image.Image],
    batch_size: int,
    max_new_tokens: int,
    repeats: int,
    device: torch.device,
    warmup_images: int | None = None,
) -> dict:
    """Both paths warmed once on one batch (`warmup_images`, default a full batch), then timed
    alternately; the fastest repeat counts."""
    warm = images[: warmup_images or batch_size]

    def ours() -> Described:
        return ours_describe(describer, images, PROMPT)

    def bare() -> Described:
        return bare_describe(bare_model, bare_processor, images, PROMPT, batch_size, max_new_tokens)

    ours_clock = GenerateClock(describer._model)  # the describer's own model object
    ours_describe(describer, warm, PROMPT)
    bare_describe(bare_model, bare_processor, warm, PROMPT, batch_size, max_new_tokens)
    ours_runs: list[dict] = []
    bare_runs: list[dict] = []
    for r in range(repeats):
        pair = [(ours, ours_clock, ours_runs), (bare, bare_clock, bare_runs)]
        for fn, clock, runs in pair if r % 2 == 0 else pair[::-1]:
            runs.append(_timed(fn, clock, device))
    ours_best = min(ours_runs, key=lambda run: run["s"])
    bare_best = min(bare_runs, key=lambda run: run["s"])
    return {
        "batch_size": batch_size,
        "images": len(images),
        "ours_s": ours_best["s"],
        "bare_s": bare_best["s"],
        "ratio": ours_best["s"] / bare_best["s"],
        "ours_images_per_s": len(images) / ours_best["s"],
        "bare_images_per_s": len(images) / bare_best["s"],
        "ours_generate_s": ours_best["generate_s"],
        "bare_generate_s": bare_best["generate_s"],
        "ours_outside_s": ours_best["s"] - ours_best["generate_s"],
        "bare_outside_s": bare_best["s"] - bare_best["generate_s"],
        "ours_tokens": ours_best["tokens"],
        "bare_tokens": bare_best["tokens"],
        "same_answers": ours_best["texts"] == bare_best["texts"],
        "ours_all_s": [round(run["s"], 3) for run in ours_runs],
        "bare_all_s": [round(run["s"], 3) for run in bare_runs],
    }


def run(
    images: int | Sequence[Image.Image] = 16,
    max_new_tokens: int = 16,
    batch_sizes: Sequence[int] = (1, 8, 16),
    device: str | None = None,
    *,
    images_dir: Path | None = None,
    image_splitting: bool = True,
    repeats: int = 2,
    warmup_images: int | None = None,
) -> list[dict]:
    """One row per batch size; `images` is a count (read from the Parquet or `images_dir`) or the
    images themselves. Speed-ups are against the smallest batch size run."""
    photos = load_images(images, images_dir) if isinstance(images, int) else list(images)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.environ["WDYS_DEVICE"] = str(dev)  # HFDescriber.load picks its device from here
    dtype = pick_dtype(dev)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="smolvlm-256m-random-") as tmp:
        model_dir = save_model_dir(Path(tmp), max_new_tokens, image_splitting)
        bare_processor = AutoProcessor.from_pretrained(tmp)
        bare_model = AutoModelForImageTextToText.from_pretrained(tmp, dtype=dtype).to(dev).eval()
        bare_clock = GenerateClock(bare_model)
        image_tokens, prompt_tokens = image_token_count(bare_processor, photos[0])
        for b in batch_sizes:
            # loaded anew for each batch size: the loader is the only way to choose it
            describer = HFDescriber.load(str(model_dir), max_new_tokens=max_new_tokens, batch_size=b)
            row = _measure_batch_size(
                describer,
                bare_model,
                bare_processor,
                bare_clock,
                photos,
                b,
                max_new_tokens,
                repeats,
                dev,
                warmup_images,
            )
            del describer
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            print(f"batch {b}: ours {row['ours_s']:.3f} s, bare {row['bare_s']:.3f} s", flush=True)
            row |= {
                "device": str(dev),
                "dtype": str(dtype).removeprefix("torch."),
                "max_new_tokens": max_new_tokens,
                "image_splitting": image_splitting,
                "image_tokens_per_image": image_tokens,
                "prompt_tokens_per_image": prompt_tokens,
            }
            rows.append(row)
    base = min(rows, key=lambda r: r["batch_size"])
    for row in rows:
        row["ours_speedup"] = base["ours_s"] / row["ours_s"]
        row["bare_speedup"] = base["bare_s"] / row["bare_s"]
    return rows


# Report ------------------------------------------------------------------------------------------


def report(rows: list[dict]) -> list[dict]:
    """The table, then one verdict line per figure; returns the figures."""
    first = rows[0]
    base = min(r["batch_size"] for r in rows)
    print(
        f"\nSmolVLM-256M architecture, random weights | {first['images']} images, "
        f"{first['image_tokens_per_image']} image tokens/image (prompt {first['prompt_tokens_per_image']}), "
        f"splitting={first['image_splitting']} | max_new_tokens={first['max_new_tokens']} | "
        f"{first['device']} {first['dtype']}"
    )
    print(
        f"{'batch':>5} {'ours s':>8} {'bare s':>8} {'ratio':>6} {'ours img/s':>10} {'bare img/s':>10} "
        f"{'ours xb' + str(base):>8} {'bare xb' + str(base):>8} {'generate s ours/bare':>21} "
        f"{'outside s ours/bare':>20} {'tokens ours/bare':>17}"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>5} {r['ours_s']:>8.3f} {r['bare_s']:>8.3f} {r['ratio']:>6.3f} "
            f"{r['ours_images_per_s']:>10.3f} {r['bare_images_per_s']:>10.3f} {r['ours_speedup']:>8.2f} "
            f"{r['bare_speedup']:>8.2f} {r['ours_generate_s']:>10.3f}/{r['bare_generate_s']:<10.3f} "
            f"{r['ours_outside_s']:>9.3f}/{r['bare_outside_s']:<10.3f} "
            f"{r['ours_tokens']:>8}/{r['bare_tokens']:<8}"
        )
    print()
    figures = []
    for r in rows:
        b = r["batch_size"]
        same_work = r["ours_tokens"] == r["bare_tokens"]  # equal work; same answers is only a check
        figures.append(
            verdict(
                f"describer/bare time, batch {b}",
                r["ratio"],
                f"<= {TARGET_RATIO:.2f}",
                r["ratio"] <= TARGET_RATIO and same_work,
                f"ours {r['ours_s']:.3f} s, bare {r['bare_s']:.3f} s, {r['images']} images; outside generate "
                f"ours {r['ours_outside_s']:.3f} s, bare {r['bare_outside_s']:.3f} s; "
                f"tokens {r['ours_tokens']}/{r['bare_tokens']}, same answers {r['same_answers']}; "
                f"runs {r['ours_all_s']}/{r['bare_all_s']}",
            )
        )
        if b != base:
            need = r["bare_speedup"] / TARGET_RATIO
            figures.append(
                verdict(
                    f"describer speed-up batch {b} over {base}",
                    r["ours_speedup"],
                    f">= {need:.2f} (bare/1.1)",
                    r["ours_speedup"] >= need,
                    f"bare speed-up {r['bare_speedup']:.2f}; img/s ours {r['ours_images_per_s']:.3f}, "
                    f"bare {r['bare_images_per_s']:.3f}",
                )
            )
    return figures


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="how many images (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--images-dir", type=Path, default=None, help="PNGs from perf.devdata")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per path, order alternating; the fastest counts"
    )
    parser.add_argument(
        "--warmup-images", type=int, default=None, help="images in each path's warm-up (default: a batch)"
    )
    parser.add_argument(
        "--no-image-splitting",
        dest="image_splitting",
        action="store_false",
        help="one 512 px tile per image instead of SmolVLM's published 4x4 tiles + global view",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = run(
        args.images,
        args.max_new_tokens,
        args.batch_sizes,
        args.device,
        images_dir=args.images_dir,
        image_splitting=args.image_splitting,
        repeats=args.repeats,
        warmup_images=args.warmup_images,
    )
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
