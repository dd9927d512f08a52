"""The one-line error guard of every command: a mistake the user must fix (a `core.errors.UserError`,
or a refused key, missing credentials or an unreachable server from a library below) prints one
`error: ...` line and exits with status 2, also when it comes back out of a failed Prefect flow
run: Prefect's own console lines about the failed task and flow keep their message but lose the
traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator

from core.errors import UserError

# Outside failures by exception class (module prefix, class name), without importing the libraries.
OPENAI = "the OpenAI-compatible server"
OUTSIDE_FAILURES = {
    ("botocore", "NoCredentialsError"): "no credentials for the storage root ({exc}): set AWS_ACCESS_KEY_ID"
    " and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    ("botocore", "PartialCredentialsError"): "incomplete storage credentials ({exc})",
    ("botocore", "EndpointConnectionError"): "cannot reach the object store ({exc}): check AWS_ENDPOINT_URL",
    ("botocore", "ConnectTimeoutError"): "the object store does not answer ({exc}): check AWS_ENDPOINT_URL",
    ("openai", "AuthenticationError"): f"{OPENAI} refused the key ({{exc}}): check OPENAI_API_KEY",
    ("openai", "APIConnectionError"): f"cannot reach {OPENAI} ({{exc}}): check OPENAI_BASE_URL",
    ("httpx", "ConnectError"): "cannot connect ({exc}): is the Prefect server at PREFECT_API_URL running?",
    ("huggingface_hub", "GatedRepoError"): "the hub refused a gated repository ({exc}): accept its terms"
    " on the hub and set HF_TOKEN",
    ("builtins", "PermissionError"): "permission denied ({exc}): use a storage root you can write (--root)",
}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from or during, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a failure the user must fix, or None for a bug."""
    for cause in causes(exc):
        if isinstance(cause, UserError):
            return str(cause)
        for cls in type(cause).__mro__:
            template = OUTSIDE_FAILURES.get((cls.__module__.split(".")[0], cls.__name__))
            if template:
                return template.format(exc=str(cause).splitlines()[0] if str(cause) else cls.__name__)
    return None


class NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task and flow with their traceback; for a user's mistake the message
    is enough. Applied to console handlers only: the run's log on the server keeps everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and user_message(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_console() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, NoTracebackForUserErrors) for f in handler.filters
        ):
            handler.addFilter(NoTracebackForUserErrors())


def guarded(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a command's `main`; a user's mistake becomes `error: ...` and exit status 2."""
    quiet_console()
    try:
        main(argv)
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    return 0
