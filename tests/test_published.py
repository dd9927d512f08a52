"""Image-only rows of a model, tag and dataset that open_clip's table lists are shown beside the
published figure, on the console and in the `published_baselines` view, with a warning when a run of
the evaluation split is more than 2 points off."""

from __future__ import annotations

import pyarrow as pa

from storage.io import write_table
from storage.keys import IMAGE_ONLY_RUN, classes_key
from storage.paths import shard_path
from storage.reference import published_top1
from storage.schemas import PREDICTIONS
from tasks.evaluate import format_table, run_metrics

N = 200


def image_only_run(
    root: str, encoder: str, split: str, correct: int, dataset: str = "cifar10"
) -> dict[str, str]:
    run = {
        "dataset": dataset,
        "split": split,
        "subset": f"first{N}-shard{N}",
        "classes": classes_key([str(c) for c in range(10)]),
        "encoder": encoder,
        **IMAGE_ONLY_RUN,
        "class_weights": "templates",
    }
    labels = [i % 10 for i in range(N)]
    top5 = [
        [label, (label + 1) % 10] if i < correct else [(label + 1) % 10, label]
        for i, label in enumerate(labels)
    ]
    table = {
        "image_id": [f"{split}/{i}" for i in range(N)],
        "label": labels,
        "components": ["image"] * N,
        "top5": top5,
        "scores": [None] * N,
    }
    write_table(shard_path(root, PREDICTIONS, run, 0), pa.table(table, schema=PREDICTIONS.schema()))
    return run


def test_published_figure_beside_the_measured_one(tmp_path):
    root = str(tmp_path)
    published = published_top1()[("open_clip_ViT-L-14_openai", "cifar10")]
    assert published == 95.59  # open_clip's table: ViT-L-14 openai, CIFAR-10
    runs = [
        image_only_run(root, "open_clip:ViT-L-14/openai", "test", 190),  # 95.00: within 2 points
        image_only_run(root, "open_clip:ViT-L-14/openai#gelu", "test", 160),  # 80.00: a wrong build
        image_only_run(root, "open_clip:ViT-L-14/openai", "dev", 160),  # another split: no verdict
        image_only_run(root, "offline:conse-lite0-minilm", "test", 100),  # not in the table
    ]

    rows = run_metrics(root, runs)
    text = format_table(rows)

    figures = {(r["encoder"], r["split"]): r["published_top1"] for r in rows}
    assert figures[("open_clip_ViT-L-14_openai", "test")] == published
    assert figures[("open_clip_ViT-L-14_openai_gelu", "test")] == published
    assert figures[("offline_conse-lite0-minilm", "test")] is None
    checks = [line for line in text.splitlines() if line.startswith("published baseline:")]
    assert len(checks) == 3
    (ok,) = [c for c in checks if "openai on cifar10 test" in c]
    assert "measured 95.00 at float32, open_clip published 95.59 (-0.59): ok" in ok
    (wrong,) = [c for c in checks if "_gelu" in c]
    assert "measured 80.00" in wrong and "WARNING: more than 2 points off" in wrong
    (dev,) = [c for c in checks if " dev " in c]
    assert "indicative only" in dev and "WARNING" not in dev


def test_a_precision_tagged_encoder_finds_its_figure_and_says_its_precision(tmp_path):
    """The flow keys an open_clip encoder on CUDA as `+amp-bf16` (or `+amp-fp16`): the same weights
    and architecture as open_clip's row, so it is compared, and the line says at what precision."""
    root = str(tmp_path)
    runs = [
        image_only_run(root, "open_clip:ViT-L-14/openai+amp-bf16", "test", 190),
        image_only_run(root, "open_clip:ViT-L-14/openai#gelu+amp-fp16", "test", 160),
    ]

    rows = run_metrics(root, runs)
    checks = [line for line in format_table(rows).splitlines() if line.startswith("published baseline:")]

    assert {r["published_top1"] for r in rows} == {95.59}
    (bf16,) = [c for c in checks if "amp-bf16" in c]
    assert "measured 95.00 at bf16 autocast, open_clip published 95.59 (-0.59): ok" in bf16
    (fp16,) = [c for c in checks if "amp-fp16" in c]
    assert "measured 80.00 at fp16 autocast" in fp16 and "WARNING" in fp16


def test_imagenet_evaluation_split_is_recognised_under_both_names(tmp_path):
    """ImageNet's evaluation split is its `val` set, which the paper deployment runs as `test` (as
    CLIP_benchmark names it): both are compared, neither is "indicative only"."""
    root = str(tmp_path)
    published = published_top1()[("open_clip_ViT-L-14_openai", "imagenet1k")]
    runs = [
        image_only_run(root, "open_clip:ViT-L-14/openai", split, 100, "imagenet1k")
        for split in ("test", "val", "train")
    ]

    checks = [
        line for line in format_table(run_metrics(root, runs)).splitlines() if line.startswith("published")
    ]

    assert len(checks) == 3 and all(f"open_clip published {published:.2f}" in c for c in checks)
    verdicts = {
        split: next(c for c in checks if f"imagenet1k {split} " in c) for split in ("test", "val", "train")
    }
    assert "WARNING: more than 2 points off" in verdicts["test"]
    assert "WARNING: more than 2 points off" in verdicts["val"]
    assert "indicative only" in verdicts["train"]
