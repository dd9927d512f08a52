"""The Prefect deployments of wdys and their work pool, applied to the server at $PREFECT_API_URL.

`make deploy` (or `python -m deployments.deploy`) applies them; running it again updates them in
place. The pool, its type, the job variables (image, env, any other) and where workers find the
code are settings (`--help`), not code: the default is the local process pool `wdys-process`
running this checkout.

| deployment               | what it runs                                                          |
| ------------------------ | --------------------------------------------------------------------- |
| benchmark/quick          | CIFAR-10 dev with the offline profile: runs on any machine             |
| benchmark/quick-dask     | the same with shard tasks on Dask ($WDYS_DASK_ADDRESS or a local one) |
| benchmark/paper          | the paper's setup: CLIP ViT-L-14 `openai` + an open VLM describer      |
|                          | (`vllm:` where the worker running it has vLLM, else `hf:`)             |
| benchmark/nightly        | the paper's setup, nightly at 03:00 UTC                               |
| watch-models/default     | hourly, and on every `wdys.model.registered` event                     |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prefect import deploy
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectAlreadyExists
from prefect.flows import Flow
from prefect.runner.storage import create_storage_from_source
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

from core import settings
from core.errors import UserError
from method.fusion import CLASS_WEIGHTINGS
from sources.benchmarks import PAPER_BENCHMARKS

REPO = Path(__file__).resolve().parents[1]
WORK_POOL = str(settings.WORK_POOL.default)
GPU_LIMIT = "gpu"  # the prefix of the per-device limits `gpu-<host>-<device>` (tasks/slots.py)

QUICK = {"datasets": ["cifar10"], "splits": ["dev"]}  # the flow's defaults: the offline profile

# The paper's setup. The describer is Qwen2-VL-7B-Instruct: an open VLM that follows the
# initial-prediction prompt ("Answer using a single word if possible") reliably, fits one 24 GB
# GPU in bf16, and is served by transformers, vLLM and SGLang alike (docs/operations.md).
# The worker running the flow picks the describer's engine (`vllm_where_available`), not the machine
# that deployed it: vLLM where the worker has it, transformers elsewhere.
PAPER = {
    "datasets": sorted(PAPER_BENCHMARKS),
    "splits": ["test"],
    "encoders": ["open_clip:ViT-L-14/openai"],
    "describers": ["hf:Qwen/Qwen2-VL-7B-Instruct"],
    "class_weights": list(CLASS_WEIGHTINGS),
    "vllm_where_available": True,
}
PAPER_ABOUT = (
    "The paper's setup: CLIP ViT-L-14 `openai` + Qwen2-VL-7B-Instruct, on vLLM (`vllm:`, a server the"
    " run starts and stops) where the worker running the flow has it (.venv-vllm from `make vllm`, or"
    " $WDYS_VLLM), on transformers (`hf:`) elsewhere; the run's log and its results name the engine used."
)


JOB_ENV = {
    settings.GPU_LIMIT.name: GPU_LIMIT,  # model compute takes a slot of its device's limit, strictly
    **settings.OFFLINE,
}


@dataclass(frozen=True)
class Target:
    """Where the deployments run: the pool, the type it is created with when missing, the image,
    more job variables and environment, and where a flow run finds the code (a folder on the
    machine or in the image that runs the flow, or a git URL)."""

    pool: str = WORK_POOL
    pool_type: str = "process"
    image: str | None = None
    source: str = str(REPO)
    env: dict[str, str] = field(default_factory=dict)
    job_variables: dict[str, object] = field(default_factory=dict)
    gpu_slots: int = 1
    suffix: str = ""  # deployment names are flow/name+suffix: one server, several pools

    def job(self) -> dict[str, object]:
        """The job variables of every deployment. A folder source is the code's import root too;
        for a git source, set PYTHONPATH (or install the project in the image) with `--env`."""
        code = {} if "://" in self.source or self.source.endswith(".git") else {"PYTHONPATH": self.source}
        env = {**JOB_ENV, settings.GPU_SLOTS.name: str(self.gpu_slots), **code, **self.env}
        return {**self.job_variables, "env": env}


def source(entrypoint: str) -> Flow:
    return Flow.from_source(source=str(REPO), entrypoint=entrypoint)


def definitions(schedules: bool = True, target: Target | None = None) -> list:
    """The deployments as this checkout defines them; a flow run pulls the code from
    `target.source` (a folder that need not exist here, e.g. a path inside the image)."""
    target = target or Target()
    deployments = _definitions(schedules, target.job())
    for deployment in deployments:
        deployment.storage = create_storage_from_source(target.source)  # the pull step: a folder or git
        deployment.name += target.suffix
    return deployments


def _definitions(schedules: bool, job: dict[str, object]) -> list:
    benchmark = source("flows/benchmark.py:benchmark")
    on_dask = source("flows/benchmark.py:benchmark_on_dask")
    watch = source("flows/watch_models.py:watch_models")
    nightly, hourly = ("0 3 * * *", "0 * * * *") if schedules else (None, None)
    return [
        benchmark.to_deployment("quick", parameters=QUICK, job_variables=job, tags=["wdys", "quick"]),
        on_dask.to_deployment("quick-dask", parameters=QUICK, job_variables=job, tags=["wdys", "dask"]),
        benchmark.to_deployment(
            "paper", parameters=PAPER, description=PAPER_ABOUT, job_variables=job, tags=["wdys", "paper"]
        ),
        benchmark.to_deployment(
            "nightly",
            parameters=PAPER,
            description=f"Nightly at 03:00 UTC. {PAPER_ABOUT}",
            job_variables=job,
            cron=nightly,
            tags=["wdys", "paper"],
        ),  # fmt: skip
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


async def ensure_pool(target: Target) -> None:
    """Create the pool when it is missing, with its type's default base job template (what `prefect
    work-pool create --type ...` gives; the server falls back to its bundled copy offline). An
    existing pool is left as it is."""
    async with get_client() as client:
        template = await get_default_base_job_template_for_infrastructure_type(target.pool_type)
        if template is None:
            raise UserError(f"unknown work pool type {target.pool_type!r} (process, docker, kubernetes, ...)")
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(
                WorkPoolCreate(name=target.pool, type=target.pool_type, base_job_template=template)
            )


def key_values(pairs: list[str], what: str, parse: Callable[[str], object] = str) -> dict[str, object]:
    """`KEY=VALUE` arguments as a dict; a value is parsed with `parse` (json.loads for variables)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{what} {pair!r} is not KEY=VALUE")
        try:
            out[key] = parse(value)
        except ValueError:
            out[key] = value  # a bare string needs no JSON quotes
    return out


def parse_target(argv: list[str] | None) -> tuple[Target, bool]:
    parser = argparse.ArgumentParser(prog="python -m deployments.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--no-schedules", action="store_true", help="leave out the cron schedules (tests)")
    parser.add_argument("--pool", default=settings.WORK_POOL.text(), help="work pool ($WDYS_WORK_POOL)")
    parser.add_argument(
        "--pool-type",
        default=settings.WORK_POOL_TYPE.text(),
        help="type the pool is created with when missing: process, docker, kubernetes, ..."
        " ($WDYS_WORK_POOL_TYPE)",
    )
    parser.add_argument(
        "--image",
        default=settings.IMAGE.text() or None,
        help="job image, for docker/kubernetes pools ($WDYS_IMAGE)",
    )
    parser.add_argument(
        "--source",
        default=settings.SOURCE.text() or str(REPO),
        help="where a flow run finds the code: a folder on the machine or in the image, or a git URL"
        " ($WDYS_SOURCE; default: this checkout)",
    )
    parser.add_argument(
        "--suffix",
        default=settings.DEPLOYMENT_SUFFIX.text(),
        help="appended to every deployment name, e.g. -k8s for benchmark/quick-k8s ($WDYS_DEPLOYMENT_SUFFIX)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job environment")
    parser.add_argument(
        "--job-variable",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="any other job variable of the pool",
    )
    parser.add_argument(
        "--gpu-slots",
        type=int,
        default=settings.GPU_SLOTS.integer(),
        help="models computing at once on one device; sizes each per-device limit when it is created",
    )
    args = parser.parse_args(argv)
    target = Target(
        pool=args.pool,
        pool_type=args.pool_type,
        image=args.image or None,
        source=args.source,
        env={key: str(value) for key, value in key_values(args.env, "--env").items()},
        job_variables=key_values(args.job_variable, "--job-variable", json.loads),
        gpu_slots=args.gpu_slots,
        suffix=args.suffix,
    )
    return target, not args.no_schedules


def main(argv: list[str] | None = None) -> None:
    try:
        target, schedules = parse_target(argv)
        asyncio.run(ensure_pool(target))
    except UserError as exc:
        sys.exit(f"error: {exc}")
    deploy(
        *definitions(schedules=schedules, target=target),
        work_pool_name=target.pool,
        image=target.image,  # a job variable; refused by a pool without an `image` variable
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    print(f"deployed to work pool {target.pool!r}; a worker: `prefect worker start --pool {target.pool}`")


if __name__ == "__main__":
    main()
