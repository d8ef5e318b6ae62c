"""User-facing errors.

Anything a user can cause (a bad path, a malformed file, a wrong shape) raises an
:class:`OwlError` subclass whose message is one line naming the problem and the fix. The
command line prints that line and exits with code 2, without a traceback. Messages that quote
another library's error quote its first line (:func:`first_line`).
"""


class OwlError(Exception):
    """An error caused by the user's input, reported as one line."""

    exit_code = 2


class CheckpointError(OwlError):
    """A model folder or weight file that cannot be loaded exactly."""


class InputError(OwlError):
    """Model inputs that do not fit together (placeholders vs images, shapes, lengths)."""


class ConfigError(OwlError):
    """A configuration or recipe key that does not exist or has a bad value."""


def first_line(exc: BaseException, limit: int | None = None, empty: str | None = None) -> str:
    """The first line of ``exc``'s message, cut to ``limit`` characters.

    For a message that is empty (or only whitespace): ``empty``, by default the exception's type
    name. Third-party errors (PIL, torch, json...) often carry several lines; a one-line error
    message quotes only the first.
    """
    text = str(exc).strip()
    if text:
        line = text.splitlines()[0]
    else:
        line = type(exc).__name__ if empty is None else empty
    return line[:limit] if limit is not None else line
