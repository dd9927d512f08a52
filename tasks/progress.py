"""Progress of a run, stage by stage (ingest, describe, embed, class weights, classify).

A run of the paper's benchmarks takes hours; without this it said nothing until its final table.
Each shard task declares its stage (`@stage("embed")`); the flow's `Run` notes every task it
submits with that stage and the shard's image count (`RunProgress.expect`), and waits on the futures
through `RunProgress.wait`, which reports as they finish, from the flow's own thread:

- a line per stage in the run's log and on the console, at most every $WDYS_PROGRESS_INTERVAL_S
  seconds (default 5) and when the stage ends: shards and images done of the total, rate, ETA;
  a stage whose shards were all in the cache says so as soon as they are read;
- a Prefect progress artifact per stage (`wdys-progress-<stage>`), which a deployment's run page shows.

The lines are logged at INFO by `prefect.flow_runs.progress`, whose own level lets them through even
when PREFECT_LOGGING_LEVEL hides Prefect's per-task INFO lines.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.logging.loggers import PrefectLogAdapter

from core import settings

# The stages a run reports, in order; the flow's docstring and docs/architecture.md use these names.
StageName = Literal["ingest", "describe", "embed", "class weights", "classify"]
ORDER: tuple[StageName, ...] = get_args(StageName)

_STAGE_OF: dict[Callable[..., Any], StageName] = {}  # a task's function -> the stage it declared
T = TypeVar("T")
LOGGER = "prefect.flow_runs.progress"


def run_logger() -> logging.LoggerAdapter:
    """The flow run's log at INFO, also from inside a task that runs in the flow's process."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    extra = {"flow_run_id": str(run.id), "flow_run_name": run.name} if run else {"send_to_api": False}
    return PrefectLogAdapter(logger, extra=extra)


def stage(name: StageName) -> Callable[[T], T]:
    """Declares the stage whose progress a task's runs count in. Held by the task's function, so the
    copies `with_options` makes (tasks/answers.py) keep it."""

    def declare(task: T) -> T:
        _STAGE_OF[task.fn] = name  # type: ignore[attr-defined]
        return task

    return declare


def stage_of(task: Any) -> StageName | None:
    """The stage a task declared, or None (plan, evaluate and report are not tracked)."""
    return _STAGE_OF.get(task.fn)


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Stage:
    """Counts of one stage; `first` is when its first computed shard finished (the rate's start)."""

    name: str
    shards: int = 0
    images: int = 0
    done: int = 0
    done_images: int = 0
    cached: int = 0
    failed: int = 0
    computed_images: int = 0
    computed_shards: int = 0
    first: float | None = None
    first_units: int = 0
    last_logged: float = -math.inf
    artifact: UUID | None = None
    elapsed_from: float = field(default_factory=lambda: time.monotonic())

    @property
    def finished(self) -> bool:
        return self.done >= self.shards

    def units(self) -> tuple[int, int, str]:
        """(computed, remaining, unit): images where the stage's shards hold images, else shards."""
        if self.images:
            return self.computed_images, self.images - self.done_images, "images"
        return self.computed_shards, self.shards - self.done, "shards"

    def line(self, now: float) -> str:
        images = f" ({self.done_images}/{self.images} images)" if self.images else ""
        counts = f"{self.done}/{self.shards} shards{images}"
        extra = "".join(
            f", {n} {what}" for n, what in ((self.cached, "from cache"), (self.failed, "failed")) if n
        )
        if self.finished and self.cached == self.shards:
            return f"{self.name}: cached, all {self.shards} shards read from the cache{images}"
        computed, remaining, unit = self.units()
        rate = None
        if self.first is not None and now > self.first and computed > self.first_units:
            rate = (computed - self.first_units) / (now - self.first)
        speed = f", {rate:.2f} {unit}/s" if rate else ""
        if self.finished:
            return f"{self.name}: done in {clock(now - self.elapsed_from)}, {counts}{extra}{speed}"
        if not computed:  # nothing computed yet (all from the cache so far): no rate to tell
            return f"{self.name}: {counts}{extra}"
        eta = clock(remaining / rate) if rate else "?"
        return f"{self.name}: {counts}{extra}{speed}, ETA {eta}"


class RunProgress:
    """Counts per stage of the tasks a flow run submits, reported as they finish."""

    def __init__(self, log: logging.LoggerAdapter | logging.Logger, interval: float | None = None) -> None:
        self.log = log
        self.interval = settings.PROGRESS_INTERVAL_S.number() if interval is None else interval
        self.stages: dict[str, Stage] = {}
        self.expected: dict[UUID, tuple[str, int]] = {}  # task run id -> (stage, images)

    @classmethod
    def for_this_run(cls, interval: float | None = None) -> RunProgress:
        """A tracker that logs to the current flow run."""
        return cls(run_logger(), interval)

    def expect(self, future: PrefectFuture, stage_name: StageName | None, images: int) -> None:
        """Count a submitted task in its stage (None: a task no stage tracks)."""
        if stage_name is None:
            return
        stage = self.stages.setdefault(stage_name, Stage(stage_name))
        stage.shards += 1
        stage.images += images
        self.expected[future.task_run_id] = (stage_name, images)

    def wait(self, futures: Sequence[PrefectFuture]) -> list:
        """The futures' results in their order, reporting progress as each finishes. The first
        failure is raised as soon as it happens (after it is counted)."""
        self.start_artifacts()
        results: dict[int, Any] = {}
        for future in as_completed(list(futures)):
            try:
                results[id(future)] = result = future.result()
            except BaseException:
                self.finished(future, None, failed=True)
                raise
            self.finished(future, result)
        return [results[id(f)] for f in futures]

    def finished(self, future: PrefectFuture, result: Any, failed: bool = False) -> None:
        known = self.expected.get(future.task_run_id)
        if known is None:
            return
        stage = self.stages[known[0]]
        images, now = known[1], time.monotonic()
        stage.done += 1
        stage.done_images += images
        if failed:
            stage.failed += 1
        elif getattr(result, "computed", True):
            stage.computed_shards += 1
            stage.computed_images += images
            if stage.first is None:
                stage.first, stage.first_units = now, stage.units()[0]
        else:
            stage.cached += 1
        if stage.finished or now - stage.last_logged >= self.interval:
            self.report(stage, now)

    def report(self, stage: Stage, now: float) -> None:
        stage.last_logged = now
        line = stage.line(now)
        self.log.info(line)
        if stage.artifact is not None:
            update_progress_artifact(stage.artifact, 100.0 * stage.done / stage.shards, description=line)

    def start_artifacts(self) -> None:
        """One progress artifact per stage, created once every task is submitted (totals known)."""
        for name in ORDER:
            stage = self.stages.get(name)
            if stage is not None and stage.artifact is None:
                stage.artifact = create_progress_artifact(
                    100.0 * stage.done / stage.shards,
                    key=f"wdys-progress-{name.replace(' ', '-')}",
                    description=stage.line(time.monotonic()),
                )
