"""Errors meant for people: one line that says what, where and how to fix it.

The CLI turns any :class:`UserError` into that line on stderr and exit code 2, with no
traceback. Anything else is a bug and keeps its traceback.
"""

__all__ = ["UserError", "ConfigError", "DatasetUnavailable", "where_raised"]


class UserError(Exception):
    """A problem with the user's input or environment; the message is shown as is."""


class ConfigError(UserError):
    """A bad experiment config or search-space file."""


class DatasetUnavailable(UserError):
    """A dataset's files are missing and cannot be downloaded."""


def where_raised(exc: BaseException, fn) -> str:
    """``file:line`` where ``exc`` left the user's code ``fn`` (a plugin's builder or reader): the
    deepest traceback frame in ``fn``'s own file, else the deepest frame; for one-line errors."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    own = getattr(getattr(fn, "__code__", None), "co_filename", None)
    mine = [f for f in frames if own is not None and f.filename == own]
    f = (mine or frames)[-1] if frames else None
    return f"{f.filename}:{f.lineno}" if f is not None else "?"
