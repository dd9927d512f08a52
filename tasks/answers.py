"""Shards of describer answers: only final answers are ever stored as a result.

A describer's answer to one item (an image, or one class-description sample) is final when it is an
answer or a failure that asking again would not change (an unreadable image, a refusal). A transient
failure (rate limit, overload, timeout) that outlived the client's own retries is not: the final
answers of the shard wait in a hidden pending file, the task fails with `AnswersPending`, and its
retry (or the next run) asks the missing items again, and only them, up to `MAX_ANSWER_ATTEMPTS`
times each; then the item is stored as an error with its reason, so no run stays stuck on it. A
failure of the describer as a whole (`DescriberUnavailable`: a refused key, a spent quota, an unknown
model, or one error from some point of a shard on) fails the task at once and is never retried;
nothing of that try is written.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
from storage.paths import PENDING_ITEMS, pending_path
from storage.reuse import ID, reusable_rows
from tasks.cache import ShardResult, publish
from tasks.slots import MODEL_TAG

# A task retry after the client's own retries: together they span a server outage of a minute or two.
ANSWER_RETRY_DELAYS_S = [10, 30, 60]
# How often an item may fail transiently (each time after the client's own retries) before it is
# stored as an error with its reason: two runs' worth of task tries, so a run cannot stay stuck on
# an item a server never answers, and an outage of a few minutes never becomes an error.
MAX_ANSWER_ATTEMPTS = 2 * (len(ANSWER_RETRY_DELAYS_S) + 1)
# This many final failures with one error ending a shard's requests are the describer's failure
# (an account or endpoint failing from some point on), not the items'.
SYSTEMIC_TAIL = 8

Settle = Callable[[list[int], list[Answer]], list[Answer]]


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


class FailingFromSomePointOn(DescriberUnavailable):
    """One same error ended a shard's requests after answers: the answers before it are kept
    aside (in the pending file, never as a result), and the rerun asks the failed items alone."""


def require_an_answer(describer: str, answers: Sequence[Answer], answered_before: bool = False) -> None:
    """Fail the run, storing no answer, on what says nothing about the images and everything about
    the describer: every request of a shard with no answer yet failed for good, or the last
    `SYSTEMIC_TAIL` or more requests, after answers, failed with one same error (an account or
    endpoint failing from some point on: a spent budget, an unloaded model). Items asked again in a
    shard that holds answers (`answered_before`) that fail for good are their own errors: a run
    never stays stuck on them (a class or a run of images a content filter always blocks)."""
    failed = [a.error for a in answers if a.text is None and a.final]
    if answers and len(failed) == len(answers) and not answered_before:
        error, count = Counter(failed).most_common(1)[0]
        raise DescriberUnavailable(
            f"{describer}: all {len(answers)} requests of a shard failed ({count} with: {error}); "
            "check the model id and that the model takes images, and the server's log"
        )
    tail = _failing_tail(answers)
    if len(tail) >= SYSTEMIC_TAIL and any(a.text is not None for a in answers[: len(answers) - len(tail)]):
        raise FailingFromSomePointOn(
            f"{describer}: the last {len(tail)} requests of a shard all failed with: {tail[0].error}; "
            "a failure of the account or the endpoint, not of the images: check the server's log "
            "and the account, then rerun (those items are asked again, none is stored as an answer)"
        )


def _failing_tail(answers: Sequence[Answer]) -> list[Answer]:
    """The final failures that end `answers`, all with the same error (numbers and ids aside)."""
    tail: list[Answer] = []
    for answer in reversed(answers):
        if answer.text is not None or not answer.final:
            break
        if tail and _error_kind(answer.error) != _error_kind(tail[0].error):
            break
        tail.append(answer)
    return tail


def _error_kind(error: str | None) -> str:
    return re.sub(r"[0-9a-f]{8,}|\d+", "#", error or "")


def _read_pending(
    pending: str, key_columns: Sequence[str]
) -> tuple[pa.Table | None, dict[Hashable, tuple[int, str | None]]]:
    """The final answers kept from earlier tries, and how often each still missing item was asked,
    with its last error."""
    if not exists(pending):
        return None, {}
    table = read_table(pending)
    items = json.loads((table.schema.metadata or {}).get(PENDING_ITEMS.encode(), b"[]"))
    attempts = {_key(k, key_columns): (n, error) for k, n, error in items}
    return table.replace_schema_metadata(None), attempts


def _write_pending(pending: str, table: pa.Table, waiting: dict[Hashable, tuple[int, str | None]]) -> None:
    """The final answers so far, and the items still missing: [[key, times asked, last error], ...]."""
    items = json.dumps([[k, n, error] for k, (n, error) in waiting.items()])
    write_table(pending, table.replace_schema_metadata({PENDING_ITEMS: items}))


def _key(value: object, key_columns: Sequence[str]) -> Hashable:
    """A key as `keys` holds it: a value, or a tuple of values for several key columns."""
    return tuple(value) if len(key_columns) > 1 else value  # type: ignore[arg-type]


def _exhausted(answer: Answer, attempts: int) -> Answer:
    """A transient failure asked `attempts` times: stored as the item's error, with its reason."""
    reason = f"{answer.error} (still failing after {attempts} attempts; not asked again)"
    return dataclasses.replace(answer, error=reason, retryable=False)


def _ordered(table: pa.Table, key_columns: Sequence[str], keys: Sequence[Hashable]) -> pa.Table:
    position = {k: i for i, k in enumerate(keys)}
    rows = zip(*(table.column(c).to_pylist() for c in key_columns), strict=True)
    found = [position[k if len(key_columns) > 1 else k[0]] for k in rows]
    return table.take(pa.array(np.argsort(found, kind="stable")))


def answer_shard(
    path: str,
    describer: str,
    key_columns: Sequence[str],
    keys: Sequence[Hashable],
    ask: Callable[[list[int], Settle], tuple[list[Answer], int]],
    rows: Callable[[list[int], list[Answer]], pa.Table],
) -> ShardResult:
    """The shard at `path` of answers to the items `keys` (values of `key_columns`, in row order).

    `ask(positions, settle)` answers the items at those positions and returns the forward passes it
    spent; it hands what the describer answered to `settle(positions, answers)`, which fails the
    run on a failure of the describer as a whole (`require_an_answer`) and turns an item's
    `MAX_ANSWER_ATTEMPTS`-th transient failure into its error. Failures that are not the
    describer's (an image that does not decode) are the caller's own errors, never settled.
    `rows(positions, answers)` makes their table rows. Items already answered in an earlier try are
    not asked again; the items still missing, and how often each was asked, wait in the pending
    file."""
    if exists(path):
        return ShardResult(path, computed=False)
    pending = pending_path(path)
    earlier, attempts = _read_pending(pending, key_columns)
    answered: set[Hashable] = set()
    if earlier is not None:
        columns = [earlier.column(c).to_pylist() for c in key_columns]
        answered = {k if len(key_columns) > 1 else k[0] for k in zip(*columns, strict=True)}
    answered_before = earlier is not None and earlier.column("text").null_count < earlier.num_rows
    if list(key_columns) == [ID]:  # answered under another selection of the split: taken as stored
        reused = reusable_rows(path, [k for k in keys if k not in answered])  # type: ignore[misc]
        if reused is not None:
            earlier = pa.concat_tables([t.cast(reused.schema) for t in (earlier, reused) if t is not None])
            answered |= set(reused.column(ID).to_pylist())

    held: list[tuple[int, Answer]] = []  # the answers of a try that failed from some point on

    def settle(positions: list[int], answers: list[Answer]) -> list[Answer]:
        answers = list(answers)
        for j, (i, answer) in enumerate(zip(positions, answers, strict=True)):
            if not answer.final:
                asked = attempts.get(keys[i], (0, None))[0] + 1
                attempts[keys[i]] = (asked, answer.error)
                if asked >= MAX_ANSWER_ATTEMPTS:
                    answers[j] = _exhausted(answer, asked)
        try:
            require_an_answer(describer, answers, answered_before)
        except FailingFromSomePointOn:
            for i, answer in zip(positions, answers, strict=True):
                if answer.text is not None:
                    held.append((i, answer))
                elif answer.final:  # listed as waiting (the `pending` view), asked again next run
                    attempts[keys[i]] = (attempts.get(keys[i], (0, None))[0] + 1, answer.error)
            raise
        return answers

    todo = [i for i, k in enumerate(keys) if k not in answered]
    try:
        answers, passes = ask(todo, settle)
    except FailingFromSomePointOn:
        kept = [t for t in (earlier, rows([i for i, _ in held], [a for _, a in held])) if t is not None]
        now = {keys[i] for i, _ in held}
        _write_pending(
            pending,
            _ordered(pa.concat_tables(kept), key_columns, keys),
            {k: v for k, v in attempts.items() if k not in now},
        )
        raise
    final = [(i, a) for i, a in zip(todo, answers, strict=True) if a.final]
    fresh = rows([i for i, _ in final], [a for _, a in final])
    table = _ordered(pa.concat_tables([t for t in (earlier, fresh) if t is not None]), key_columns, keys)
    missing = [(i, a) for i, a in zip(todo, answers, strict=True) if not a.final]
    if missing:
        _write_pending(pending, table, {keys[i]: attempts[keys[i]] for i, _ in missing})
        raise AnswersPending(
            f"{len(missing)} of {len(keys)} answers failed after the client's retries "
            f"(e.g. {missing[0][1].error}); they alone are asked again on the task's retry or the next "
            f"run, each at most {MAX_ANSWER_ATTEMPTS} times before it is stored as an error"
        )
    publish(path, table)
    remove(pending)
    return ShardResult(path, computed=True, forward_passes=passes, rows=table.num_rows)
