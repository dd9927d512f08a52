"""Shards of describer answers: only final answers are ever stored as a result.

A describer's answer to one item (an image, or one class-description sample) is final when it is an
answer or a failure that asking again would not change (an unreadable image, a refusal). A transient
failure (rate limit, overload, timeout) that outlived the client's own retries is not: the final
answers of the shard wait in a hidden pending file, the task fails with `AnswersPending`, and its
retry (or the next run) asks the missing items again, and only them. A failure of the describer as a
whole (`DescriberUnavailable`: a refused key, an unknown model) fails the task at once and is never
retried; nothing of it is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import pyarrow as pa
from prefect import Task, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from backends.base import Answer, DescriberUnavailable
from backends.registry import computes_locally
from core.errors import UserError
from storage.io import exists, read_table, remove, write_table
from storage.paths import pending_path
from tasks.cache import ShardResult, publish
from tasks.slots import MODEL_TAG

# A task retry after the client's own retries: together they span a server outage of a minute or two.
ANSWER_RETRY_DELAYS_S = [10, 30, 60]


class AnswersPending(UserError):
    """Some items failed transiently even after the client's retries: their retry or the next run
    asks them again, and only them."""


def retry_unless_unavailable(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect's retry condition: a describer that cannot answer at all is not asked again."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, DescriberUnavailable)


def describer_task(name: str) -> Callable:
    """The Prefect task decorator every describer task shares: on the `gpu` tag, retried after
    transient failures (`ANSWER_RETRY_DELAYS_S`), never after `DescriberUnavailable`."""
    return task(
        cache_policy=NO_CACHE,
        name=name,
        tags=[MODEL_TAG],
        retries=len(ANSWER_RETRY_DELAYS_S),
        retry_delay_seconds=ANSWER_RETRY_DELAYS_S,
        retry_condition_fn=retry_unless_unavailable,
    )


_untagged: dict[Task, Task] = {}


def for_describer(shard_task: Task, describer: str) -> Task:
    """The task as it runs for this describer. A served describer computes nothing here, so its
    tasks drop the model tag: on a cluster they take no GPU, and Prefect acquires no tag-concurrency
    lease per task (measured: all four task threads stalled up to 1.8 s on that lease between shards,
    leaving the server idle; docs/BENCHMARKS.md)."""
    if computes_locally(describer):
        return shard_task
    if shard_task not in _untagged:
        _untagged[shard_task] = shard_task.with_options(tags=[])
    return _untagged[shard_task]


def require_an_answer(describer: str, answers: Sequence[Answer]) -> None:
    """A shard whose every request failed for good says nothing about the images and everything
    about the describer: fail the run rather than store errors that look like results."""
    failed = [a.error for a in answers if a.text is None and a.final]
    if answers and len(failed) == len(answers):
        error, count = Counter(failed).most_common(1)[0]
        raise DescriberUnavailable(
            f"{describer}: all {len(answers)} requests of a shard failed ({count} with: {error}); "
            "check the model id and that the model takes images, and the server's log"
        )


def _ordered(table: pa.Table, key_columns: Sequence[str], keys: Sequence[Hashable]) -> pa.Table:
    position = {k: i for i, k in enumerate(keys)}
    rows = zip(*(table.column(c).to_pylist() for c in key_columns), strict=True)
    found = [position[k if len(key_columns) > 1 else k[0]] for k in rows]
    return table.take(pa.array(np.argsort(found, kind="stable")))


def answer_shard(
    path: str,
    key_columns: Sequence[str],
    keys: Sequence[Hashable],
    ask: Callable[[list[int]], tuple[list[Answer], int]],
    rows: Callable[[list[int], list[Answer]], pa.Table],
) -> ShardResult:
    """The shard at `path` of answers to the items `keys` (values of `key_columns`, in row order).

    `ask(positions)` answers the items at those positions (raising `DescriberUnavailable` when the
    describer cannot answer at all) and returns the forward passes it spent; `rows(positions,
    answers)` makes their table rows. Items already answered in an earlier try are not asked again."""
    if exists(path):
        return ShardResult(path, computed=False)
    pending = pending_path(path)
    earlier = read_table(pending) if exists(pending) else None
    answered = set()
    if earlier is not None:
        answered = set(zip(*(earlier.column(c).to_pylist() for c in key_columns), strict=True))
        answered = {k if len(key_columns) > 1 else k[0] for k in answered}
    todo = [i for i, k in enumerate(keys) if k not in answered]
    answers, passes = ask(todo)
    final = [(i, a) for i, a in zip(todo, answers, strict=True) if a.final]
    fresh = rows([i for i, _ in final], [a for _, a in final])
    table = _ordered(pa.concat_tables([t for t in (earlier, fresh) if t is not None]), key_columns, keys)
    missing = [a for a in answers if not a.final]
    if missing:
        if table.num_rows:
            write_table(pending, table)
        raise AnswersPending(
            f"{len(missing)} of {len(keys)} answers failed after the client's retries "
            f"(e.g. {missing[0].error}); they alone are asked again on the task's retry or the next run"
        )
    publish(path, table)
    remove(pending)
    return ShardResult(path, computed=True, forward_passes=passes, rows=table.num_rows)
