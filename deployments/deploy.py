"""The Prefect deployments of wdys, and the setup they need: a process work pool and the `gpu`
global concurrency limit. `make deploy` (or `python -m deployments.deploy`) applies them to the
server at $PREFECT_API_URL; running it again updates them in place.

| deployment               | what it runs                                                          |
| ------------------------ | --------------------------------------------------------------------- |
| benchmark/quick          | CIFAR-10 dev with the offline profile: runs on any machine             |
| benchmark/quick-dask     | the same with shard tasks on Dask ($WDYS_DASK_ADDRESS or a local one) |
| benchmark/paper          | the paper's setup: CLIP ViT-L-14 `openai` + an open VLM describer      |
| benchmark/nightly        | the paper's setup, nightly at 03:00 UTC                               |
| watch-models/default     | hourly, and on every `wdys.model.registered` event                     |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from prefect import deploy
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectAlreadyExists
from prefect.flows import Flow

from method.fusion import CLASS_WEIGHTINGS
from sources.registry import BENCHMARKS
from tasks.cache import GPU_LIMIT_ENV

REPO = Path(__file__).resolve().parents[1]
WORK_POOL = "wdys-process"
GPU_LIMIT = "gpu"
GPU_SLOTS = 1  # one model on the GPU at a time; raise it on a multi-GPU host

QUICK = {"datasets": ["cifar10"], "splits": ["dev"]}  # the flow's defaults: the offline profile

# The paper's setup. The describer is Qwen2-VL-7B-Instruct: an open VLM that follows the
# initial-prediction prompt ("Answer using a single word if possible") reliably, fits one 24 GB
# GPU in bf16, and is served by transformers, vLLM and SGLang alike (docs/operations.md).
PAPER = {
    "datasets": sorted(BENCHMARKS),
    "splits": ["test"],
    "encoders": ["open_clip:ViT-L-14/openai"],
    "describers": ["hf:Qwen/Qwen2-VL-7B-Instruct"],
    "class_weights": list(CLASS_WEIGHTINGS),
}

JOB_ENV = {
    GPU_LIMIT_ENV: GPU_LIMIT,  # shard tasks take a slot of the limit, strictly
    "PYTHONPATH": str(REPO),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def source(entrypoint: str) -> Flow:
    return Flow.from_source(source=str(REPO), entrypoint=entrypoint)


def definitions(schedules: bool = True) -> list:
    benchmark = source("flows/benchmark.py:benchmark")
    on_dask = source("flows/benchmark.py:benchmark_on_dask")
    watch = source("flows/watch_models.py:watch_models")
    job = {"env": JOB_ENV}
    nightly, hourly = ("0 3 * * *", "0 * * * *") if schedules else (None, None)
    return [
        benchmark.to_deployment("quick", parameters=QUICK, job_variables=job, tags=["wdys", "quick"]),
        on_dask.to_deployment("quick-dask", parameters=QUICK, job_variables=job, tags=["wdys", "dask"]),
        benchmark.to_deployment("paper", parameters=PAPER, job_variables=job, tags=["wdys", "paper"]),
        benchmark.to_deployment(
            "nightly", parameters=PAPER, job_variables=job, cron=nightly, tags=["wdys", "paper"]
        ),
        watch.to_deployment(
            "default",
            job_variables=job,
            cron=hourly,
            tags=["wdys"],
            triggers=[
                DeploymentEventTrigger(
                    name="on-model-registered",
                    expect={"wdys.model.registered"},
                    match={"prefect.resource.id": "wdys.model.*"},
                    parameters={"extra_models": ["{{ event.resource['wdys.model-id'] }}"]},
                )
            ],
        ),
    ]


async def ensure_pool_and_limit() -> None:
    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=GPU_SLOTS)
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--no-schedules", action="store_true", help="leave out the cron schedules (tests)")
    args = parser.parse_args(argv)
    asyncio.run(ensure_pool_and_limit())
    deploy(
        *definitions(schedules=not args.no_schedules),
        work_pool_name=WORK_POOL,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    print(f"deployed to work pool {WORK_POOL!r}; start a worker with `make worker`")


if __name__ == "__main__":
    main()
