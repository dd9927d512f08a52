"""How a shard of answers settles its failures, with the real OpenAI-compatible describer against
the local server (fakes/chat_server.py) and real Parquet files: a retry of a few pending items
that then fail for good stores them as errors (the run does not stay stuck on them), an item that
fails transiently on every try ends as an error row after `MAX_ANSWER_ATTEMPTS`, and one error that
ends a shard's requests from some point on fails the shard and stores nothing. Items waiting are
listed by the `pending` view and never read as results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from backends.base import Answer, DescriberUnavailable
from fakes.chat_server import BAD_ITEM, FAIL_SIZE, ODD, FakeChatServer, images, load, serving
from storage import query
from storage.catalog import create_views
from storage.paths import pending_path, shard_path
from storage.schemas import DESCRIPTIONS
from tasks.answers import MAX_ANSWER_ATTEMPTS, SYSTEMIC_TAIL, AnswersPending, ShardAnswers, answer_shard
from tasks.describe import answers_table

GOOD = (20, 20)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeChatServer]:
    with serving(monkeypatch) as srv:
        yield srv


def shard(path: Path, sizes: list[tuple[int, int]], prompts: list[str]) -> object:
    """The shard of answers of one image per size, asked with the prompt of its position, by a
    fresh describer (as a new run would load it)."""
    ids = [f"img{i}" for i in range(len(sizes))]
    describer = load()

    def ask(todo: list[int], shard: ShardAnswers) -> tuple[list[Answer], int]:
        asked = images(*[sizes[i] for i in todo])
        answers = describer.guess(asked, [prompts[i] for i in todo], [["a"]] * len(todo), shard.sink(todo))
        return shard.settle(todo, answers), 0

    def rows(positions: list[int], answers: list[Answer]):
        return answers_table([ids[i] for i in positions], answers, None)

    return answer_shard(str(path), "openai:test", ["image_id"], ids, ask, rows)


def sent(server: FakeChatServer, size: tuple[int, int]) -> int:
    return sum(r["size"] == size for r in server.requests)


def test_a_retry_of_pending_items_that_fail_for_good_stores_their_errors(
    server: FakeChatServer, tmp_path: Path
) -> None:
    path = tmp_path / "shard-00000.parquet"
    sizes = [GOOD, (21, 21), FAIL_SIZE, FAIL_SIZE]
    with pytest.raises(AnswersPending):  # the server fails the last two with 500 on every retry
        shard(path, sizes, ["Which?"] * 4)
    assert not path.exists() and Path(pending_path(str(path))).exists()

    # The next run: the two pending items are now refused for good (400, their own).
    result = shard(path, sizes, ["Which?", "Which?", BAD_ITEM, BAD_ITEM])

    table = pq.read_table(path).to_pylist()
    assert result.computed and [r["image_id"] for r in table] == ["img0", "img1", "img2", "img3"]
    assert [r["text"] is not None for r in table] == [True, True, False, False]
    assert all("image too large" in r["error"] for r in table[2:])
    assert sent(server, GOOD) == 1  # the answered items were not asked again
    assert not Path(pending_path(str(path))).exists()


def test_an_item_failing_transiently_every_time_ends_as_an_error_row(
    server: FakeChatServer, tmp_path: Path
) -> None:
    path = tmp_path / "shard-00000.parquet"
    sizes, prompts = [GOOD, FAIL_SIZE], ["Which?"] * 2
    for attempt in range(1, MAX_ANSWER_ATTEMPTS):
        with pytest.raises(AnswersPending) as info:
            shard(path, sizes, prompts)
        assert not path.exists(), attempt
    assert f"at most {MAX_ANSWER_ATTEMPTS} times" in str(info.value)

    result = shard(path, sizes, prompts)

    good, bad = pq.read_table(path).to_pylist()
    assert result.computed and good["text"] and bad["text"] is None
    assert "500" in bad["error"] and f"still failing after {MAX_ANSWER_ATTEMPTS} attempts" in bad["error"]
    assert sent(server, GOOD) == 1
    assert sent(server, FAIL_SIZE) == MAX_ANSWER_ATTEMPTS * 3  # each try: the client's 1 + 2 retries
    assert not Path(pending_path(str(path))).exists()


def test_one_error_ending_a_shard_fails_it_and_stores_no_answer(
    server: FakeChatServer, tmp_path: Path
) -> None:
    """An endpoint that refuses every request from some point on (a budget a proxy enforces with
    400) is not the images' failure: the shard is not published, and the rerun asks the refused
    items, and only them. Asked alone and refused again (a content filter that always blocks that
    run of images), they are their own errors: the run does not stay stuck on them. The same few
    refusals ending a shard are the items' errors at once."""
    sizes, answered, refused = [GOOD] * (4 + SYSTEMIC_TAIL), ["Which?"] * 4, [BAD_ITEM] * SYSTEMIC_TAIL
    for rerun, name in (("endpoint fixed", "a.parquet"), ("refused again", "b.parquet")):
        path = tmp_path / name
        before = len(server.requests)
        with pytest.raises(DescriberUnavailable) as info:
            shard(path, sizes, answered + refused)
        message = str(info.value)
        assert f"the last {SYSTEMIC_TAIL} requests" in message and "image too large" in message
        assert not path.exists()

        again = ["Which?"] * SYSTEMIC_TAIL if rerun == "endpoint fixed" else refused
        shard(path, sizes, answered + again)

        table = pq.read_table(path)
        assert len(server.requests) - before == 4 + 2 * SYSTEMIC_TAIL  # the 4 answers not asked twice
        assert table.column("error").null_count == (4 + SYSTEMIC_TAIL if rerun == "endpoint fixed" else 4)

    few = SYSTEMIC_TAIL - 1
    shard(tmp_path / "c.parquet", sizes[: 4 + few], answered + [BAD_ITEM] * few)
    assert pq.read_table(tmp_path / "c.parquet").column("error").null_count == 4


def test_pending_items_are_listed_and_never_read_as_results(
    server: FakeChatServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "root")
    keys = {"dataset": "toy", "split": "test", "subset": "all-shard2", "describer": "openai_test"}
    keys |= {"kind": "prediction", "prompts": "p", "gen": "g", "shortlist": "none"}
    path = shard_path(root, DESCRIPTIONS, keys, 0)
    with pytest.raises(AnswersPending):
        shard(Path(path), [GOOD, FAIL_SIZE], ["Which?"] * 2)

    with duckdb.connect() as con:
        create_views(con, root)  # img0's answer waits; it is no result yet
        assert con.sql("select count(*) from descriptions").fetchall() == [(0,)]
    query.main(["--root", root, "select item, attempts, last_error from pending"])  # no catalog yet
    out = capsys.readouterr().out
    assert "img1" in out and "img0" not in out and "500" in out

    for _ in range(MAX_ANSWER_ATTEMPTS - 1):  # every try asked again, until it is stored as an error
        try:
            shard(Path(path), [GOOD, FAIL_SIZE], ["Which?"] * 2)
        except AnswersPending:
            continue
    query.main(["--root", root, "select count(*) as waiting from pending"])
    assert "│       0 │" in capsys.readouterr().out


def test_answers_got_before_the_credit_ran_out_are_kept(server: FakeChatServer, tmp_path: Path) -> None:
    """The key's credit runs out after 5 of a shard's 12 answers (402 insufficient_quota for every
    later request): the run fails with the reason and publishes nothing, and the rerun with credit
    asks exactly the 7 items never answered."""
    path = tmp_path / "shard-00000.parquet"
    sizes, prompts = [(20 + i, 20) for i in range(12)], ["Which?"] * 12
    server.quota = 5
    with pytest.raises(DescriberUnavailable, match="quota"):
        shard(path, sizes, prompts)
    assert not path.exists() and server.answered == 5
    kept = pq.read_table(pending_path(str(path)))
    assert kept.num_rows == 5 and kept.column("error").null_count == 5

    server.quota, before = None, len(server.requests)
    result = shard(path, sizes, prompts)

    assert result.computed and len(server.requests) - before == 12 - 5  # total minus N, exactly
    assert pq.read_table(path).column("error").null_count == 12
    assert server.answered == 12  # no item was answered (and paid for) twice


KILLED_RUN = """
import sys, tasks.answers as answers, test_pending_answers as t
from pathlib import Path
answers.SAVE_EVERY_S = 0.2
t.shard(Path(sys.argv[1]), [(20 + i, 20) for i in range(40)], ["Which?"] * 40)
"""


def test_a_run_killed_mid_shard_keeps_the_answers_it_saved(server: FakeChatServer, tmp_path: Path) -> None:
    """Answers are written as they arrive (every `SAVE_EVERY_S`, here 0.2 s): a run SIGKILLed in
    the middle of a shard loses at most those seconds, and the rerun does not ask what was saved."""
    path = tmp_path / "shard-00000.parquet"
    pending = Path(pending_path(str(path)))
    server.delay_s = 0.05
    env = {**os.environ, "WDYS_OPENAI_CONCURRENCY": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(path)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            pending.exists() and pq.read_metadata(pending).num_rows >= 5
        ):
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    saved = pq.read_table(pending).num_rows
    assert 5 <= saved < 40 and not path.exists()

    server.delay_s, before = 0.0, len(server.requests)
    shard(path, [(20 + i, 20) for i in range(40)], ["Which?"] * 40)

    asked = {r["size"] for r in server.requests[before:]}
    assert len(asked) == 40 - saved and len(pq.read_table(path)) == 40


def test_only_a_refusal_of_the_items_input_is_its_error(server: FakeChatServer, tmp_path: Path) -> None:
    """A failure of unknown cause (418) stays pending wherever it falls, the last item of a shard
    included, and is asked again; a 400 naming the input, a 413 or a 415 is the item's error row; a
    400 that names no input (a proxy's own trouble) is asked again."""
    path = tmp_path / "shard-00000.parquet"
    with pytest.raises(AnswersPending, match="418"):
        shard(path, [GOOD, (21, 21), (22, 22)], ["Which?", BAD_ITEM, ODD])
    assert not path.exists()

    shard(path, [GOOD, (21, 21), (22, 22)], ["Which?", BAD_ITEM, "Which?"])

    rows = pq.read_table(path).to_pylist()
    assert [r["text"] is not None for r in rows] == [True, False, True]
    assert sent(server, (22, 22)) == 2 and sent(server, (21, 21)) == 1  # the refusal was not asked again

    describer = load()
    for status, message, own in [(413, "", True), (415, "", True), (400, "upstream said no", False)]:
        server.status, server.message = status, message
        (answer,) = describer.describe(images(GOOD), "Which?")
        assert answer.text is None and answer.retryable is not own, (status, message)
