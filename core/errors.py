"""The one exception type for what the user must act on (a wrong id, a missing dataset, a key the
server refuses): the command line prints it as one `error: ...` line, never as a traceback.
Anything else is a bug and keeps its traceback.

The subclasses also derive from the built-in type the code raised before (ValueError,
FileNotFoundError), so callers that catch those keep working."""


class UserError(Exception):
    """A mistake or an outside failure the user must fix; its message says what to check."""


class BadParameter(UserError, ValueError):
    """A parameter the user gave is wrong: an unknown model id or dataset name, a bad storage root."""


class DatasetNotFound(UserError, FileNotFoundError):
    """A dataset, split or file is not where the user said (or no copy of a benchmark was found)."""


class BadDataset(UserError, ValueError):
    """A dataset exists but cannot be used as it is: no class names, no image column, wrong classes."""
