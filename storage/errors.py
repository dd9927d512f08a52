"""The one exception type for what the user must act on (a wrong id, a missing dataset, a key the
server refuses): the command line prints it as one `error: ...` line, never as a traceback.
Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A mistake or an outside failure the user must fix; its message says what to check."""
