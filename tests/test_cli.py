"""The `wdys` command: a user's mistake is one `error: ...` line with exit status 2, also out of a
failed Prefect flow run; a bug keeps its traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends.registry import validate_describer_id, validate_encoder_id
from core import guard
from core.errors import BadParameter, UserError
from sources.registry import open_dataset
from storage.paths import resolve_root
from wdys import cli

REPO = Path(__file__).resolve().parents[1]


def outside(module: str, name: str) -> type[Exception]:
    """An exception class as a library defines it (e.g. botocore's), without importing the library."""
    return type(name, (Exception,), {"__module__": module})


def test_user_mistakes_are_user_errors():
    for mistake in (
        lambda: validate_encoder_id("offline:nope"),
        lambda: validate_describer_id("gpt4"),
        lambda: open_dataset("cifar11", "test"),
        lambda: open_dataset("imagefolder:/nonexistent/photos", "test"),
        lambda: resolve_root("s3://user:secret@bucket/x"),
    ):
        with pytest.raises(UserError):
            mistake()


def test_messages_of_user_errors_and_outside_failures():
    assert guard.user_message(BadParameter("unknown encoder")) == "unknown encoder"
    try:
        try:
            raise outside("botocore.exceptions", "NoCredentialsError")("Unable to locate credentials")
        except Exception as exc:
            raise OSError("write failed") from exc
    except OSError as wrapped:
        message = guard.user_message(wrapped)
    assert (
        message is not None and "Unable to locate credentials" in message and "AWS_ACCESS_KEY_ID" in message
    )
    refused = outside("openai._exceptions", "AuthenticationError")("401 invalid key")
    assert "OPENAI_API_KEY" in guard.user_message(refused)
    assert guard.user_message(KeyError("a bug")) is None


def test_guarded_prints_one_line_for_a_mistake_and_keeps_bugs(capsys):
    def mistake(argv):
        raise BadParameter(f"unknown dataset {argv[0]!r}")

    assert guard.guarded(mistake, ["cifar11"]) == 2
    assert capsys.readouterr().err == "error: unknown dataset 'cifar11'\n"

    def bug(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        guard.guarded(bug, [])
    assert guard.guarded(lambda argv: None, []) == 0


def test_console_lines_of_user_errors_lose_only_their_traceback():
    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed: %s", ("x",), None)
    for exc, kept in ((BadParameter("wrong"), False), (RuntimeError("bug"), True)):
        try:
            raise exc
        except Exception:
            record.exc_info = sys.exc_info()
        assert guard.NoTracebackForUserErrors().filter(record)
        assert (record.exc_info is not None) is kept


def test_unknown_command_and_usage(capsys):
    assert cli.main([]) == 0 and "wdys {run,query,report,deploy,datasets}" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_missing_folder_is_one_short_error_without_traceback(tmp_path):
    """The issue's acceptance check, with Prefect's default logging level (INFO)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_LOGGING_LEVEL", "PREFECT_API_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "flows.benchmark", "--datasets", "imagefolder:/nonexistent/photos"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "PREFECT_HOME": str(tmp_path / "prefect"), "WDYS_ROOT": str(tmp_path / "root")},
        timeout=300,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, lines
    assert len(lines) <= 10 and "Traceback" not in done.stderr, lines
    assert "error: imagefolder /nonexistent/photos: no such folder" in lines
