"""The `benchmark` flow: ingest -> describe -> embed -> class weights -> classify -> evaluate.

With no describer (`describers=[]`, `--image-only`) it runs the plain zero-shot baseline alone:
ingest -> embed images -> class weights -> classify -> evaluate.

It only wires tasks. Every task works on one shard (or one dataset's class list) and returns at
once when its output shard already exists, so a rerun pays only for what is new.

    python -m flows.benchmark --help
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from pydantic import Field

from backends.registry import encoder_identity, validate_describer_id, validate_encoder_id
from method.fusion import CLASS_WEIGHTINGS, SHORTLIST_WEIGHTING
from storage.errors import UserError
from storage.keys import IMAGE_ONLY_RUN, AnswerSource, Selection
from storage.paths import resolve_root
from tasks.cache import ShardResult
from tasks.class_weights import NEEDS_DESCRIPTIONS, class_weights_task, describe_classes
from tasks.classify import classify_shard
from tasks.describe import answer_source, describe_shard, predict_shard
from tasks.embed import embed_images_shard, embed_texts_shard
from tasks.evaluate import evaluate, format_table
from tasks.ingest import ingest_shard
from tasks.plan import ShardPlan, plan_dataset
from tasks.report import report as report_task

DEFAULT_ENCODERS = ["offline:conse-lite0-minilm"]
DEFAULT_DESCRIBERS = ["offline:lite2-labels"]


def pick_describers(encoders: list[str], describers: list[str] | None) -> list[str]:
    """The offline stand-in describer goes only with offline encoders: paired with a real CLIP it
    would give numbers that look like the method's and are not."""
    for e in encoders:  # a typo in an encoder id is the error to show first
        validate_encoder_id(e)
    if describers is not None:
        return describers
    if all(e.startswith("offline:") for e in encoders):
        return DEFAULT_DESCRIBERS
    raise UserError(
        "a real encoder needs a describer: pass --describers hf:<repo or dir> (a transformers VLM), "
        "openai:<model> (an OpenAI-compatible server) or offline:lite2-labels (the offline stand-in), "
        "or --image-only for the plain zero-shot baseline"
    )


def check_parameters(
    encoders: list[str],
    describers: list[str],
    weightings: list[str],
    shard_size: int,
    shortlist: int | None = None,
) -> None:
    """Fail before any model loads: a wrong id found after an hour of describing costs that hour."""
    for e in encoders:
        validate_encoder_id(e)
    for d in describers:
        validate_describer_id(d)
    unknown = set(weightings) - set(CLASS_WEIGHTINGS)
    if unknown:
        raise ValueError(f"unknown class weightings {sorted(unknown)}; known: {list(CLASS_WEIGHTINGS)}")
    if not describers and not image_only_weightings(weightings):
        raise ValueError(f"class weightings {list(weightings)} need a describer's class descriptions")
    if not describers and shortlist is not None:
        raise ValueError("a shortlist needs a describer: it lists classes in the describer's prompt")
    if shard_size < 1:
        raise ValueError("shard_size must be positive")


def image_only_weightings(weightings: list[str]) -> list[str]:
    """The weightings a run without a describer can compute (the others need class descriptions)."""
    return [w for w in weightings if w not in NEEDS_DESCRIPTIONS]


def task_threads() -> int:
    """Shard tasks in flight at once ($WDYS_TASK_THREADS, default 4). Prefect's default is a thread
    per submitted task: every waiting shard task then held a thread (and torch's thread pool for
    it), so memory grew with the dataset. Tasks are submitted in dependency order and the pool is
    first in, first out, so a bounded pool cannot deadlock."""
    threads = int(os.environ.get("WDYS_TASK_THREADS", "4"))
    if threads < 2:
        raise ValueError("WDYS_TASK_THREADS must be at least 2: one shard computes while the next is read")
    return threads


# Typed parameters: Prefect turns them into the deployment's JSON schema, so the server refuses a
# wrong value before a run starts.
ClassWeighting = Literal["name", "template", "templates", "descriptions", "sum"]
Positive = Annotated[int, Field(ge=1)]
Names = Annotated[list[str], Field(min_length=1)]


@flow(name="benchmark", task_runner=ThreadPoolTaskRunner(max_workers=task_threads()))
def benchmark(
    datasets: Names = ["cifar10"],  # noqa: B006 - Prefect parameters need literal defaults
    splits: Names = ["dev"],  # noqa: B006
    encoders: Names = DEFAULT_ENCODERS,  # noqa: B006
    describers: list[str] | None = None,
    class_weights: Annotated[list[ClassWeighting], Field(min_length=1)] = list(CLASS_WEIGHTINGS),  # noqa: B006
    root: str | None = None,
    limit: Positive | None = None,
    sample_seed: int | None = None,
    shard_size: Positive = 256,
    max_new_tokens: Positive = 77,
    class_samples: Positive | None = None,
    shortlist: Positive | None = None,
) -> dict:
    """Zero-shot classification with multimodal-LLM descriptions, every component subset and weighting.

    Args:
        datasets: registered names (`cifar10`) or `parquet:<path|URL>` / `imagefolder:<path|URL>`.
        splits: dataset splits, e.g. `dev`, `test`.
        encoders: `open_clip:<arch>/<pretrained>` or `offline:conse-lite0-minilm`.
        describers: `hf:<repo|dir>`, `openai:<model>` or `offline:lite2-labels`; none (`[]`) runs
            the image-only zero-shot baseline alone. Default: the offline stand-in, with offline
            encoders only (a real encoder needs an explicit describer).
        class_weights: any of name, template, templates, descriptions, sum (without a describer,
            descriptions and sum are skipped).
        root: storage root, any fsspec URL (default $WDYS_ROOT, else ./data).
        limit: use only this many images per split (the first ones, or a sample with `sample_seed`).
        sample_seed: seed of the random sample when `limit` is set.
        shard_size: images per shard (one task per shard and stage).
        max_new_tokens: generation length of the describer's answers.
        class_samples: class descriptions sampled per prompt and class (default: 10, the paper's 50
            per class over the 5 prompts; 3 for the offline stand-in).
        shortlist: list only the top-k classes (by the encoder's image-only `templates` scores) in
            the initial-prediction prompt; default: every class, as in the paper.

    Returns the run's metrics rows, the model forward passes it ran and how many shards it
    computed or found in the cache.
    """
    started = time.perf_counter()
    describers = pick_describers(encoders, describers)
    check_parameters(encoders, describers, class_weights, shard_size, shortlist)
    encoders = [encoder_identity(e) for e in encoders]  # the precision joins the id (and cache key)
    root = resolve_root(root)
    sources = [answer_source(d, max_new_tokens, class_samples, shortlist) for d in describers]
    # Every dataset and split is opened before any task starts: a bad name fails in seconds.
    plans = [
        plan_dataset(Selection(dataset, split, limit, sample_seed, shard_size))
        for dataset in datasets
        for split in splits
    ]
    check_shortlist(shortlist, plans)
    futures: list = []
    runs: list[dict[str, str]] = []
    for plan in plans:
        dataset, names = plan.selection.dataset, plan.class_names
        parts = [plan.shard(i) for i in range(len(plan.shards))]  # what each shard task gets
        shards = range(len(parts))
        manifests = [ingest_shard.submit(root, parts[s]) for s in shards]
        descriptions: dict[AnswerSource, list] = {src: [] for src in sources}
        # Without a shortlist a guess does not depend on the encoder: ask once per describer.
        guesses: dict[AnswerSource, list] = {src: [] for src in sources if src.shortlist is None}
        images: dict[str, list] = {encoder: [] for encoder in encoders}
        # Shard by shard: a shard's description and guess back to back (the describer reads it once),
        # and its image embeddings beside the first describer's, so describer and encoders work side
        # by side. One describer's shards come one after another: a VLM is loaded once per stage
        # (at most one stays resident per device, backends.hf_resident).
        for i, src in enumerate(sources or [None]):
            for s in shards:
                if src in descriptions:
                    descriptions[src].append(
                        describe_shard.submit(root, parts[s], src, wait_for=[manifests[s]])
                    )
                if src in guesses:
                    guesses[src].append(predict_shard.submit(root, parts[s], src, wait_for=[manifests[s]]))
                for encoder in encoders if i == 0 else ():
                    images[encoder].append(
                        embed_images_shard.submit(root, parts[s], encoder, wait_for=[manifests[s]])
                    )
        class_answers = {
            src: describe_classes.submit(root, dataset, names, src)
            for src in sources
            if set(class_weights) & set(NEEDS_DESCRIPTIONS)
        }
        futures += [*manifests, *class_answers.values()]
        futures += [f for fs in (*descriptions.values(), *guesses.values(), *images.values()) for f in fs]
        for encoder in encoders:
            plain_weights = {
                w: class_weights_task.submit(root, dataset, names, encoder, w, None)
                for w in {*class_weights, SHORTLIST_WEIGHTING if shortlist else None} - {None}
                if w not in NEEDS_DESCRIPTIONS
            }
            futures += plain_weights.values()
            for src in sources:
                answers = {"description": descriptions[src]}
                if src in guesses:
                    answers["prediction"] = guesses[src]
                else:  # a shortlist is ranked by this encoder's image-only scores
                    answers["prediction"] = [
                        predict_shard.submit(
                            root,
                            parts[s],
                            src,
                            encoder,
                            wait_for=[images[encoder][s], plain_weights[SHORTLIST_WEIGHTING]],
                        )
                        for s in shards
                    ]
                    futures += answers["prediction"]
                texts = {
                    kind: [
                        embed_texts_shard.submit(
                            root, parts[s], encoder, src, kind, wait_for=[answers[kind][s]]
                        )
                        for s in shards
                    ]
                    for kind in answers
                }
                futures += texts["description"] + texts["prediction"]
                for weighting in class_weights:
                    weights = plain_weights.get(weighting)
                    if weights is None:
                        weights = class_weights_task.submit(
                            root, dataset, names, encoder, weighting, src, wait_for=[class_answers[src]]
                        )
                        futures.append(weights)
                    futures += [
                        classify_shard.submit(
                            root,
                            parts[s],
                            encoder,
                            src,
                            weighting,
                            wait_for=[
                                images[encoder][s],
                                weights,
                                texts["description"][s],
                                texts["prediction"][s],
                            ],
                        )
                        for s in shards
                    ]
                    runs.append(
                        {
                            **plan.selection.keys(),
                            "encoder": encoder,
                            **src.run_keys(),
                            "class_weights": weighting,
                        }
                    )
            if not sources:  # the image-only baseline: plain zero-shot
                for weighting in image_only_weightings(class_weights):
                    futures += [
                        classify_shard.submit(
                            root,
                            parts[s],
                            encoder,
                            None,
                            weighting,
                            wait_for=[images[encoder][s], plain_weights[weighting]],
                        )
                        for s in shards
                    ]
                    runs.append(
                        {
                            **plan.selection.keys(),
                            "encoder": encoder,
                            **IMAGE_ONLY_RUN,
                            "class_weights": weighting,
                        }
                    )
    results: list[ShardResult] = [f.result() for f in futures]
    rows = evaluate(root, runs)
    report_dir = report_task(root, runs)
    summary = Counter("computed" if r.computed else "cached" for r in results)
    passes = sum(r.forward_passes for r in results)
    report = (
        f"{format_table(rows)}\n"
        f"shards computed: {summary['computed']}, read from cache: {summary['cached']}; "
        f"model forward passes: {passes}; wall time: {time.perf_counter() - started:.1f} s; root: {root}\n"
        f"report: {report_dir}/report.md"
    )
    get_run_logger().info(report)
    print(report, flush=True)
    return {
        "metrics": rows,
        "forward_passes": passes,
        "shards_computed": summary["computed"],
        "shards_cached": summary["cached"],
        "root": root,
        "report": report_dir,
    }


def check_shortlist(shortlist: int | None, plans: list[ShardPlan]) -> None:
    for plan in plans:
        if shortlist is not None and shortlist > len(plan.class_names):
            raise ValueError(
                f"shortlist {shortlist} is larger than the {len(plan.class_names)} classes"
                f" of {plan.selection.dataset}"
            )


def dask_task_runner() -> DaskTaskRunner:
    """The Dask scheduler at $WDYS_DASK_ADDRESS, else a local cluster of $WDYS_DASK_WORKERS (2)
    single-threaded worker processes. Shards live on shared storage, so any worker can take any task."""
    address = os.environ.get("WDYS_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("WDYS_DASK_WORKERS", "2"))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


# The same flow with its shard tasks on Dask (deployments pick it by entrypoint).
benchmark_on_dask = benchmark.with_options(task_runner=dask_task_runner())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.benchmark",
        description=benchmark.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Runs locally without a Prefect server (a temporary one starts in-process).",
    )
    parser.add_argument("--datasets", nargs="+", default=["cifar10"], help="dataset names (default: cifar10)")
    parser.add_argument("--splits", nargs="+", default=["dev"], help="splits (default: dev)")
    parser.add_argument("--encoders", nargs="+", default=DEFAULT_ENCODERS, help="encoder model ids")
    describers = parser.add_mutually_exclusive_group()
    describers.add_argument(
        "--describers",
        nargs="+",
        default=None,
        help="describer model ids (default: the offline stand-in, with offline encoders only)",
    )
    describers.add_argument(
        "--image-only",
        action="store_const",
        const=[],
        dest="describers",
        help="no describer: the plain zero-shot baseline alone (image embeddings only)",
    )
    parser.add_argument(
        "--class-weights",
        nargs="+",
        default=list(CLASS_WEIGHTINGS),
        choices=CLASS_WEIGHTINGS,
        help="class weightings",
    )
    parser.add_argument(
        "--root", default=None, help="storage root, any fsspec URL (default: $WDYS_ROOT or ./data)"
    )
    parser.add_argument("--limit", type=int, default=None, help="images per split")
    parser.add_argument("--sample-seed", type=int, default=None, help="seed of the sample taken with --limit")
    parser.add_argument("--shard-size", type=int, default=256, help="images per shard")
    parser.add_argument("--max-new-tokens", type=int, default=77, help="describer answer length")
    parser.add_argument(
        "--class-samples",
        type=int,
        default=None,
        help="class descriptions per prompt and class (default: 10, the paper's 50 per class; offline: 3)",
    )
    parser.add_argument(
        "--shortlist", type=int, default=None, help="list only the top-k classes in the guess prompt"
    )
    parser.add_argument(
        "--dask",
        action="store_true",
        help="run shard tasks on Dask: $WDYS_DASK_ADDRESS, else a local cluster of $WDYS_DASK_WORKERS",
    )
    args = parser.parse_args(argv)
    try:  # before Prefect records the parameters: a root holding credentials must not be stored
        resolve_root(args.root)
    except ValueError as exc:
        parser.error(str(exc))
    (benchmark_on_dask if args.dask else benchmark)(
        datasets=args.datasets,
        splits=args.splits,
        encoders=args.encoders,
        describers=args.describers,
        class_weights=args.class_weights,
        root=args.root,
        limit=args.limit,
        sample_seed=args.sample_seed,
        shard_size=args.shard_size,
        max_new_tokens=args.max_new_tokens,
        class_samples=args.class_samples,
        shortlist=args.shortlist,
    )


if __name__ == "__main__":
    sys.exit(main())
