"""Error types every command maps to an exit code: usage errors exit 2, runtime failures exit 1."""


class DppError(Exception):
    """A failure the user should see as one line, without a traceback (exit 1).

    `details` are further lines (one per bad file, say) printed under the message.
    """

    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.details = list(details or [])


class UsageError(DppError):
    """A bad argument, file or value given by the user (exit 2)."""

    exit_code = 2


class Refused(DppError):
    """A runtime refusal before any work starts (the output is damaged, say): exit 1, nothing written."""


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
