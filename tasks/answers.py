"""Shards of describer answers: only final answers are ever stored as a result.

A describer's answer to one item (an image, or one class-description sample) is final when it is an
answer or a failure that asking again would not change (an unreadable image, a refusal). A transient
failure (rate limit, overload, timeout) that outlived the client's own retries is not: the final
answers of the shard wait in a hidden pending file, the task fails with `AnswersPending`, and its
retry (or the next run) asks the missing items again, and only them, up to `MAX_ANSWER_ATTEMPTS`
times each; then the item is stored as an error with its reason, so no run stays stuck on it. A
failure of the describer as a whole (`DescriberUnavailable`: a refused key, a spent quota, an unknown
model, or one error from some point of a shard on) fails the task at once and is never retried; the
answers it got before stay in the pending file, never as a result. Answers arrive one by one
(`ShardAnswers.sink`) and are saved there every `SAVE_EVERY_S` and on any failure, Ctrl-C and
SIGTERM included: a run killed outright loses at most those seconds, and what was saved is not
asked again.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import pyarrow as pa
from prefect import Task, task
from prefect.cache_policies import NONE as NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from backends.base import Answer, AnswerSink, DescriberUnavailable
from backends.registry import computes_locally, runs_a_server
from core.errors import UserError
from storage.io import exists, read_table, remove, write_table
from storage.paths import PENDING_ITEMS, pending_path
from storage.reuse import ID, ordered, reusable_rows
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

# How often the answers arrived so far are written to a shard's pending file while it is asked: a run
# killed outright (SIGKILL, a lost machine) loses at most this many seconds of answers.
SAVE_EVERY_S = 5.0

Sink = AnswerSink  # (index of the item in a describer call, its answer)
Ask = Callable[[list[int], "ShardAnswers"], tuple[list[Answer], int]]


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


_untagged: dict[tuple[Task, bool], Task] = {}


def for_describer(shard_task: Task, describer: str) -> Task:
    """The task as it runs for this describer. A served describer computes nothing here, so its
    tasks drop the model tag: on a cluster they take no GPU, and Prefect acquires no tag-concurrency
    lease per task (measured: all four task threads stalled up to 1.8 s on that lease between shards,
    leaving the server idle; docs/BENCHMARKS.md). A describer behind its own server (`vllm:`) drops
    the tag for the same reason (0.64 -> 0.86 of the stand-in server's rate) but keeps its place on a
    GPU worker of a Dask cluster (`on_device`, read by `flows.cluster`)."""
    on_device = runs_a_server(describer)
    if computes_locally(describer) and not on_device:
        return shard_task
    if (shard_task, on_device) not in _untagged:
        untagged = shard_task.with_options(tags=[])
        untagged.on_device = on_device
        _untagged[shard_task, on_device] = untagged
    return _untagged[shard_task, on_device]


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


class ShardAnswers:
    """One try at a shard of answers (see `answer_shard`): what earlier tries and other selections
    left, what arrives now, and where it goes. Answers are handed over one by one as they arrive
    (`sink`) and written to the pending file every `SAVE_EVERY_S` and on any failure, Ctrl-C and
    SIGTERM included, so a run killed outright loses at most those seconds of answers, and the rerun
    asks only what was never answered."""

    def __init__(
        self,
        path: str,
        describer: str,
        key_columns: Sequence[str],
        keys: Sequence[Hashable],
        rows: Callable[[list[int], list[Answer]], pa.Table],
    ) -> None:
        self.path, self.describer, self.key_columns, self.keys, self._rows = (
            path, describer, list(key_columns), keys, rows,
        )  # fmt: skip
        self.pending = pending_path(path)
        self.earlier, self.attempts = _read_pending(self.pending, key_columns)
        self.answered = set() if self.earlier is None else set(self._keys_of(self.earlier))
        # Items asked again in a shard that already holds answers fail as their own errors.
        texts = None if self.earlier is None else self.earlier.column("text")
        self.answered_before = texts is not None and texts.null_count < len(texts)
        self._arrived: dict[int, Answer] = {}  # position -> answer (with text) got in this try
        self._lock = threading.Lock()
        self._dirty = False
        self._saved_at = time.monotonic()
        self._reuse()

    def _keys_of(self, table: pa.Table) -> list[Hashable]:
        columns = [table.column(c).to_pylist() for c in self.key_columns]
        return [k if len(columns) > 1 else k[0] for k in zip(*columns, strict=True)]

    def _reuse(self) -> None:
        """Answers to the same images stored under another selection of the split, as stored."""
        if self.key_columns != [ID]:
            return
        reused = reusable_rows(self.path, [k for k in self.keys if k not in self.answered])  # type: ignore[misc]
        if reused is not None:
            self.earlier = pa.concat_tables(
                [t.cast(reused.schema) for t in (self.earlier, reused) if t is not None]
            )
            self.answered |= set(reused.column(ID).to_pylist())

    def todo(self) -> list[int]:
        """Positions of the items no earlier try and no other selection answered."""
        return [i for i, k in enumerate(self.keys) if k not in self.answered]

    def sink(self, positions: Sequence[int]) -> Sink:
        """What a describer hands each answer to as it arrives: (index in its call, answer), for a
        call that asks about the items at `positions`."""
        return lambda i, answer: self.receive(positions[i], answer)

    def receive(self, position: int, answer: Answer) -> None:
        """Keep an answer that arrived (failures wait for `settle`); save every `SAVE_EVERY_S`."""
        if answer.text is None:
            return
        with self._lock:
            self._arrived[position] = answer
            self._dirty = True
            due = time.monotonic() - self._saved_at >= SAVE_EVERY_S
        if due:
            self.save()

    def settle(self, positions: list[int], answers: list[Answer]) -> list[Answer]:
        """Judge what the describer answered for `positions`: fails the run on a failure of the
        describer as a whole (`require_an_answer`), keeping its answers in the pending file, and
        turns an item's `MAX_ANSWER_ATTEMPTS`-th transient failure into its error."""
        answers = list(answers)
        for j, (i, answer) in enumerate(zip(positions, answers, strict=True)):
            if answer.text is not None:
                self.receive(i, answer)
            elif not answer.final:
                asked = self._asked(i, answer)
                if asked >= MAX_ANSWER_ATTEMPTS:
                    answers[j] = _exhausted(answer, asked)
        try:
            require_an_answer(self.describer, answers, self.answered_before)
        except FailingFromSomePointOn:
            for i, answer in zip(positions, answers, strict=True):
                if answer.text is None and answer.final:  # listed as waiting (the `pending` view)
                    self._asked(i, answer)
            raise
        return answers

    def _asked(self, position: int, failure: Answer) -> int:
        key = self.keys[position]
        asked = self.attempts.get(key, (0, None))[0] + 1
        with self._lock:
            self.attempts[key] = (asked, failure.error)
            self._dirty = True
        return asked

    def _table(self, answers: dict[int, Answer]) -> pa.Table:
        fresh = self._rows(list(answers), list(answers.values()))
        parts = [t for t in (self.earlier, fresh) if t is not None]
        return ordered(pa.concat_tables(parts), self.key_columns, self.keys)

    def save(self) -> None:
        """Write the answers so far and the items waiting to the pending file, when anything changed
        since the last save."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty, self._saved_at = False, time.monotonic()
            arrived = dict(self._arrived)
            now = {self.keys[i] for i in arrived}
            waiting = {k: v for k, v in self.attempts.items() if k not in now and k not in self.answered}
            table = self._table(arrived)
            if table.num_rows or waiting:
                _write_pending(self.pending, table, waiting)

    def finish(self, todo: list[int], answers: list[Answer], passes: int) -> ShardResult:
        """Publish the shard, or (some items failed transiently) keep its final answers pending."""
        final = {i: a for i, a in zip(todo, answers, strict=True) if a.final}
        table = self._table(final)
        missing = [(i, a) for i, a in zip(todo, answers, strict=True) if not a.final]
        if missing:
            _write_pending(
                self.pending, table, {self.keys[i]: self.attempts[self.keys[i]] for i, _ in missing}
            )
            raise AnswersPending(
                f"{len(missing)} of {len(self.keys)} answers failed after the client's retries "
                f"(e.g. {missing[0][1].error}); they alone are asked again on the task's retry or the "
                f"next run, each at most {MAX_ANSWER_ATTEMPTS} times before it is stored as an error"
            )
        publish(self.path, table)
        remove(self.pending)
        return ShardResult(self.path, computed=True, forward_passes=passes, rows=table.num_rows)


def answer_shard(
    path: str,
    describer: str,
    key_columns: Sequence[str],
    keys: Sequence[Hashable],
    ask: Ask,
    rows: Callable[[list[int], list[Answer]], pa.Table],
) -> ShardResult:
    """The shard at `path` of answers to the items `keys` (values of `key_columns`, in row order).

    `ask(positions, shard)` answers the items at those positions (`ShardAnswers`) and returns the
    answers and the forward passes it spent; it lets the describer hand each answer to
    `shard.sink(positions)` as it arrives, and hands what the describer answered to
    `shard.settle(positions, answers)`. Failures that are not the describer's (an image that does
    not decode) are the caller's own errors, never settled. `rows(positions, answers)` makes their
    table rows. Items answered in an earlier try, or under another selection of the split, are not
    asked again; the items still missing, and how often each was asked, wait in the pending file."""
    if exists(path):
        return ShardResult(path, computed=False)
    shard = ShardAnswers(path, describer, key_columns, keys, rows)
    todo = shard.todo()
    try:
        answers, passes = ask(todo, shard)
    except BaseException:  # a failure of the describer, Ctrl-C, SIGTERM: what arrived is kept
        shard.save()
        raise
    return shard.finish(todo, answers, passes)
