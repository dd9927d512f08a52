"""The `benchmark` flow: ingest -> describe -> embed -> class weights -> classify -> evaluate -> report.

With no describer (`describers=[]`, `--image-only`) it runs the plain zero-shot baseline alone:
ingest -> embed images -> class weights -> classify -> evaluate.

It only wires tasks. Every task works on one shard (or one dataset's class list) and returns at
once when its output shard already exists, so a rerun pays only for what is new.

    python -m flows.benchmark --help
"""

from __future__ import annotations

from core import settings
from method.prompts import MAX_NEW_TOKENS

# `python -m flows.benchmark`: the command line's settings, in the environment before Prefect reads it.
if __name__ == "__main__":
    from core.settings import COMMAND_LINE, apply_defaults

    apply_defaults(COMMAND_LINE)

import argparse
import dataclasses
import sys
import time
from collections import Counter
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from backends.registry import encoder_identity, validate_describer_id, validate_encoder_id
from backends.vllm_server import open_vlm, stop_servers
from core.errors import BadParameter, UserError
from flows import stages
from flows.cli import add_flow_parameters, argument
from flows.cluster import DaskFromSettings, check_cluster
from method.fusion import CLASS_WEIGHTINGS, NEEDS_DESCRIPTIONS
from storage.keys import Answerer, Selection
from storage.paths import resolve_root
from tasks.cache import ShardResult
from tasks.describe import answerer_for
from tasks.evaluate import evaluate, format_table
from tasks.key_values import record_keys
from tasks.plan import ShardPlan, plan_dataset
from tasks.progress import RunProgress
from tasks.report import report as report_task

DEFAULT_ENCODERS = ["offline:conse-lite0-minilm"]
DEFAULT_DESCRIBERS = ["offline:lite2-labels"]


def pick_describers(
    encoders: list[str], describers: list[str] | None, vllm_where_available: bool = False
) -> list[str]:
    """The offline stand-in describer goes only with offline encoders: paired with a real CLIP it
    would give numbers that look like the method's and are not."""
    for e in encoders:  # a typo in an encoder id is the error to show first
        validate_encoder_id(e)
    if describers is not None:
        return on_this_machines_engine(describers) if vllm_where_available else describers
    if all(e.startswith("offline:") for e in encoders):
        return DEFAULT_DESCRIBERS
    raise UserError(
        "a real encoder needs a describer: pass --describers hf:<repo or dir> (a transformers VLM), "
        "vllm:<repo> (the same on a vLLM server the run starts), openai:<model> (an OpenAI-compatible "
        "server) or offline:lite2-labels (the offline stand-in), "
        "or --image-only for the plain zero-shot baseline"
    )


def on_this_machines_engine(describers: list[str]) -> list[str]:
    """Each `hf:` describer as `vllm:` (the same model, on a vLLM server the run starts) where the
    machine running the flow has vLLM (`.venv-vllm` from `make vllm`, or $WDYS_VLLM): decided here,
    on the worker, not where the deployment was made. The run's log says which engine and why."""
    chosen = [open_vlm(d) for d in describers]
    for given, used in zip(describers, chosen, strict=True):
        if given.startswith("hf:"):
            why = "vLLM found" if used != given else "no vLLM here: `make vllm` or $WDYS_VLLM to use it"
            get_run_logger().info("describer %s runs as %s (%s)", given, used, why)
    return chosen


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
        raise BadParameter(f"unknown class weightings {sorted(unknown)}; known: {list(CLASS_WEIGHTINGS)}")
    if not describers and not image_only_weightings(weightings):
        raise BadParameter(f"class weightings {list(weightings)} need a describer's class descriptions")
    if not describers and shortlist is not None:
        raise BadParameter("a shortlist needs a describer: it lists classes in the describer's prompt")
    if shard_size < 1:
        raise BadParameter("shard_size must be positive")


def image_only_weightings(weightings: list[str]) -> list[str]:
    """The weightings a run without a describer can compute (the others need class descriptions)."""
    return [w for w in weightings if w not in NEEDS_DESCRIPTIONS]


def task_threads() -> int:
    """Shard tasks in flight at once ($WDYS_TASK_THREADS, default 4). Prefect's default is a thread
    per submitted task: every waiting shard task then held a thread (and torch's thread pool for
    it), so memory grew with the dataset. Tasks are submitted in dependency order and the pool is
    first in, first out, so a bounded pool cannot deadlock."""
    threads = settings.TASK_THREADS.integer()
    if threads < 2:
        raise BadParameter("WDYS_TASK_THREADS must be at least 2: one shard computes while the next is read")
    return threads


class ThreadsFromSettings(ThreadPoolTaskRunner):
    """The flow's thread pool, sized when a run starts: Prefect enters a `duplicate()` of the flow's
    task runner for each run, so $WDYS_TASK_THREADS is read then, not when this module is imported
    (a bad value is then the one-line error, and a long-lived worker sees a changed one)."""

    def duplicate(self) -> ThreadPoolTaskRunner:
        return ThreadPoolTaskRunner(max_workers=task_threads())


# Typed parameters: Prefect turns them into the deployment's JSON schema, so the server refuses a
# wrong value before a run starts.
ClassWeighting = Literal[CLASS_WEIGHTINGS]  # type: ignore[valid-type]
Positive = Annotated[int, Field(ge=1)]
Names = Annotated[list[str], Field(min_length=1)]


# The `vllm:` servers a run started stop when it ends, however it ends (backends/vllm_server.py).
_END = [stop_servers]


@flow(
    name="benchmark",
    task_runner=ThreadsFromSettings(),
    on_completion=_END,
    on_failure=_END,
    on_crashed=_END,
    on_cancellation=_END,
)
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
    max_new_tokens: Positive = MAX_NEW_TOKENS,
    class_samples: Positive | None = None,
    shortlist: Positive | None = None,
    vllm_where_available: bool = False,
) -> dict:
    """Zero-shot classification with multimodal-LLM descriptions, every component combination and weighting.

    Args:
        datasets: registered names (`cifar10`) or `parquet:<path|URL>` / `imagefolder:<path|URL>` /
            `wds:<path|URL>`.
        splits: dataset splits, e.g. `dev`, `test`.
        encoders: `open_clip:<arch>/<pretrained>` or `offline:conse-lite0-minilm`.
        describers: `hf:<repo|dir>`, `vllm:<repo|dir>` (a vLLM server the run starts),
            `openai:<model>` or `offline:lite2-labels`; none (`[]`) runs the image-only zero-shot
            baseline alone. Default: the offline stand-in, with offline encoders only (a real
            encoder needs an explicit describer).
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
        vllm_where_available: each `hf:` describer as `vllm:` where this worker has vLLM (paper).

    Returns the run's metrics rows, forward passes, and shards computed or found in the cache.
    """
    started = time.perf_counter()
    describers = pick_describers(encoders, describers, vllm_where_available)
    check_parameters(encoders, describers, class_weights, shard_size, shortlist)
    encoders = [encoder_identity(e) for e in encoders]  # the precision joins the id (and cache key)
    root = resolve_root(root)
    check_cluster(root)  # on Dask: a GPU worker exists, and the workers see the root
    answerers: list[Answerer | None] = [
        answerer_for(d, max_new_tokens, class_samples, shortlist) for d in describers
    ] or [None]
    plans = open_plans(datasets, splits, Selection("", "", limit, sample_seed, shard_size))
    check_shortlist(shortlist, plans)
    run = stages.Run(root, RunProgress.for_this_run())  # counts the tasks it submits, stage by stage
    for plan in plans:
        stages.every_stage(run, plan, encoders, answerers, class_weights)
    results = run.progress.wait(run.futures)
    selections, names = [p.selection for p in plans], [p.class_names for p in plans]
    record_keys(root, selections, names, encoders, [s for s in answerers if s], class_weights)
    rows = evaluate(root, run.runs)
    return summarize(rows, results, root, report_task(root, run.runs), time.perf_counter() - started)


def open_plans(datasets: list[str], splits: list[str], rows: Selection) -> list[ShardPlan]:
    """Every dataset and split, opened before any task starts: a bad name fails in seconds."""
    return [
        plan_dataset(dataclasses.replace(rows, dataset=dataset, split=split))
        for dataset in datasets
        for split in splits
    ]


def summarize(
    rows: list[dict], results: list[ShardResult], root: str, report_dir: str, seconds: float
) -> dict:
    """Print and log the metrics table and what the run cost; the flow's return value."""
    summary = Counter("computed" if r.computed else "cached" for r in results)
    passes = sum(r.forward_passes for r in results)
    report = (
        f"{format_table(rows)}\n"
        f"shards computed: {summary['computed']}, read from cache: {summary['cached']}; "
        f"model forward passes: {passes}; wall time: {seconds:.1f} s; root: {root}\n"
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
            raise BadParameter(
                f"shortlist {shortlist} is larger than the {len(plan.class_names)} classes"
                f" of {plan.selection.dataset}"
            )


# The same flow with its shard tasks on Dask (deployments pick it by entrypoint).
benchmark_on_dask = benchmark.with_options(task_runner=DaskFromSettings())


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.benchmark`: the flow's parameters as flags (flows.cli), plus `--image-only`
    (no describer) and `--dask`."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.benchmark",
        description=benchmark.description.split("\n\n")[0],
        epilog="Runs locally without a Prefect server (a temporary one starts in-process).",
    )
    add_flow_parameters(parser, benchmark, skip=("describers",))
    describers = parser.add_mutually_exclusive_group()
    schema = benchmark.parameters.model_dump()["properties"]["describers"]
    describers.add_argument("--describers", **argument("describers", schema["anyOf"][0] | schema))
    describers.add_argument(
        "--image-only",
        action="store_const",
        const=[],
        dest="describers",
        help="no describer: the plain zero-shot baseline alone (image embeddings only)",
    )
    parser.add_argument(
        "--dask",
        action="store_true",
        help="run shard tasks on Dask: $WDYS_DASK_ADDRESS, else a local cluster of $WDYS_DASK_WORKERS",
    )
    args = vars(parser.parse_args(argv))
    try:  # before Prefect records the parameters: a root holding credentials must not be stored
        resolve_root(args["root"])
    except ValueError as exc:
        parser.error(str(exc))
    chosen = benchmark_on_dask if args.pop("dask") else benchmark
    chosen.task_runner.duplicate()  # a bad setting of its runner fails now, before Prefect's server starts
    chosen(**args)


if __name__ == "__main__":
    from core import lifeline
    from core.guard import guarded  # a user's mistake: one `error: ...` line, exit status 2

    lifeline.start()  # the temporary Prefect server dies with this run, however it ends
    sys.exit(guarded(main, sys.argv[1:]))
